Feature: Model catalog
  Models are registered by name and tag, tasks name them by tag, a new
  version takes a canary share of the traffic, and promote and rollback are
  one call each; the metrics count what ran per version (ORCH-3321, ORCH-3322,
  ORCH-3331..3333, ORCH-3380).

  Scenario: A canary takes its share, promote switches, the old version answers 410
    Given an orchestratord with a catalog and pools "stable" and "next" for model "tiny"
    When I register version "stable" of "tiny" as active
    And I register version "next" of "tiny" as draft
    And I make version "next" a canary with weight 0.25
    And I submit 20 tasks for model "tiny"
    Then pool "next" ran 5 of them and pool "stable" ran 15
    And the metrics count 5 completed tasks on version "next" as canary
    And the metrics count 15 completed tasks on version "stable" as active
    When I promote version "next"
    And I submit a task for model "tiny:stable"
    Then the answer is 410 with code "MODEL_DEPRECATED"
    And the message names "tiny:next"
    When I roll back version "next"
    And I submit a task for model "tiny:stable"
    Then the task is accepted
