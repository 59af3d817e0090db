Feature: Error taxonomy
  Every error is one envelope with a code that maps to exactly one HTTP
  status, and carries a correlation id (ORCH-2001, ORCH-2002, ORCH-2003).

  Scenario Outline: A faulty request gets the documented status and code
    Given an orchestratord with a mock pool
    When I send <request>
    Then the answer is <status> with code "<code>"
    And the answer carries an error envelope and a correlation id

    Examples:
      | request                       | status | code           |
      | a task with an unknown field  | 400    | INVALID_PARAMS |
      | a task with a negative seed   | 400    | INVALID_PARAMS |
      | a status request for no task  | 404    | NOT_FOUND      |
      | a task to an unready pool     | 503    | POOL_UNREADY   |
