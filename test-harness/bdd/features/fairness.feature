Feature: Fair share between tenants and priorities
  A busy pool serves its tenants by their weights and its priorities by
  theirs, and no one waits longer than the bound of ORCH-1110: a class with
  queued work waits at most the sum of the other classes' weights in
  dispatches.

  Scenario: Two weighted tenants share a one-slot pool within the bound
    Given an orchestratord with tenants "heavy" of weight 3 and "light" of weight 1 on a one-slot pool
    When "heavy" and "light" each submit 12 batch tasks at once
    And every task has ended
    Then while both waited, "heavy" started 3 tasks for every task of "light", give or take 1
    And "light" never waited more than 3 dispatches and "heavy" never more than 1

  Scenario: An interactive task overtakes queued batch work
    Given an orchestratord with tenants "heavy" of weight 3 and "light" of weight 1 on a one-slot pool
    When "light" submits 8 batch tasks and then 1 interactive task
    And every task has ended
    Then the interactive task started within 2 dispatches of its arrival
