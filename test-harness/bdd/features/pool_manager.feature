Feature: Pool manager supervision of real engines
  The pool manager restarts a crashed engine with backoff on a new port, and
  opens the circuit breaker of an engine that keeps failing until an operator
  resets it (ORCH-POOL-3007, ORCH-POOL-3015, ORCH-POOL-3017, ORCH-3026).

  @real_engine
  Scenario: A killed engine is restarted and serves again
    Given an orchestratord with an embedded SmolLM2 pool
    When the engine process of replica "smol-r0" is killed
    Then replica "smol-r0" is ready again with 1 restart on a new port
    And a task on pool "smol" completes

  @real_engine
  Scenario: An engine that keeps failing opens its circuit breaker
    Given an orchestratord with an embedded pool on a corrupt model file
    Then replica "broken-r0" reports an open circuit breaker and its last error
    And pool "broken" reset answers 200 naming replica "broken-r0"
