Feature: Backpressure when a queue is full
  A full queue answers 429 with the retry advice in headers and body
  (ORCH-1102, ORCH-1105, ORCH-1107).

  Scenario: The task after a full queue is rejected with 429
    Given an orchestratord with a mock pool
    And pool "slow" is busy and its queue is full
    When I submit a completion task with max_tokens 10 to pool "slow"
    Then the answer is 429 with code "ADMISSION_REJECT"
    And the answer carries Retry-After, X-Backoff-Ms and policy_label "reject"
