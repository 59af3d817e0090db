Feature: Submit, stream and cancel a task through OrchQueue v1
  A client submits a task, reads its Server-Sent Events to the end, and can
  cancel a running task so that no token follows the cancel (ORCH-2004).

  Scenario: A submitted task streams started, tokens and one end event
    Given an orchestratord with a mock pool
    When I submit a completion task with max_tokens 6 to pool "main"
    Then the answer is 202 with a task id
    And the stream has started, at least 1 token and exactly one end event

  Scenario: Canceling a running task ends it as canceled with no later token
    Given an orchestratord with a mock pool
    When I submit a completion task with max_tokens 400 to pool "slow"
    And I read 3 events of the stream
    And I cancel the task
    Then the cancel answer is 204
    And the stream ends with reason "canceled" and no token after the cancel
