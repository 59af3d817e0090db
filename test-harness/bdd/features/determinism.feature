Feature: Determinism toggles
  With determinism "strict" and a fixed seed the same request gives the same
  stream, byte for byte (ORCH-4004).

  Scenario: Strict determinism on the mock engine
    Given an orchestratord with a mock pool
    When I run the same strict task with seed 7 twice on pool "main"
    Then both streams are byte-identical

  @real_engine
  Scenario: Strict determinism on a real llama-server
    Given an orchestratord with a real SmolLM2 pool
    When I run the same strict task with seed 7 twice on pool "real"
    Then both streams are byte-identical
    And the started event names engine "llamacpp-http" and the pinned model digest
