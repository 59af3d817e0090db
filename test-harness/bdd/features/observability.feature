Feature: Observability
  Correlation ids are echoed and /metrics counts what happened (ORCH-2003).

  Scenario: A finished task shows up in the metrics
    Given an orchestratord with a mock pool
    When I submit a completion task with max_tokens 6 to pool "main"
    And I read the whole stream
    Then the metrics count 1 enqueued and 1 started task for pool "main"

  Scenario: A client correlation id is echoed
    Given an orchestratord with a mock pool
    When I ask for the capabilities with correlation id "bdd-corr-1"
    Then the answer echoes correlation id "bdd-corr-1"
