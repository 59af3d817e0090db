Feature: Drain and reload
  Draining a pool stops admission at once; reload is for pools the embedded
  pool manager runs (ORCH-1604, ORCH-1605).

  Scenario: A drained pool refuses new tasks
    Given an orchestratord with a mock pool
    When I drain pool "drainme" with deadline 1000 ms
    Then the drain answer is 200 for pool "drainme"
    And pool "drainme" reports draining
    When I submit a completion task with max_tokens 4 to pool "drainme"
    Then the answer is 503 with code "POOL_UNAVAILABLE"

  Scenario: Reloading a pool of external endpoints is refused
    Given an orchestratord with a mock pool
    When I reload pool "main" with model "mock-model-2"
    Then the answer is 503 with code "POOL_UNAVAILABLE"
