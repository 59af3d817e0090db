Feature: Backpressure advice is computed, not constant
  Every 429 tells the client when to come back: Retry-After in whole seconds
  rounded up from X-Backoff-Ms, both derived from the pool's measured drain
  rate (ORCH-1105, ORCH-1107, ORCH-1114).

  Scenario: A full queue answers with a computed Retry-After and the would-be place
    Given an orchestratord with a mock pool
    And pool "slow" is busy and its queue is full
    When I submit a completion task with max_tokens 10 to pool "slow"
    Then the answer is 429 with code "ADMISSION_REJECT"
    And Retry-After is X-Backoff-Ms rounded up to whole seconds
    And the answer carries X-Queue-Position and X-Queue-ETA-Ms equal to X-Backoff-Ms

  Scenario: A tenant over its concurrency quota is refused with policy quota
    Given an orchestratord where tenant "capped" may have 2 tasks in flight
    When "capped" submits 3 long tasks
    Then the third answer is 429 with policy_label "quota"
    And Retry-After is X-Backoff-Ms rounded up to whole seconds
