Feature: Configuration errors stop orchestratord at startup
  A config that cannot work is refused before anything starts, with exit code
  2 and a message naming what to fix (ORCH-1004, ORCH-8001, ORCH-8007); the
  starter config of `orchestratord init` is valid (ORCH-5130).

  Scenario Outline: orchestratord refuses a broken config
    Given a config with <problem>
    When orchestratord starts with it
    Then it exits with code 2 and says "<hint>"

    Examples:
      | problem                        | hint              |
      | an unknown top-level field     | unknown field     |
      | authentication but no keys     | auth.keys         |
      | a tenant key without a tenant  | tenant            |
      | a queue capacity of zero       | queue_capacity    |
      | a duplicated key id            | unique            |

  Scenario: The starter config of orchestratord init is valid
    Given a config written by orchestratord init
    Then the config loads with one embedded pool, a tenant key and an admin key
