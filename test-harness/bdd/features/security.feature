Feature: Keys, roles and tenant isolation
  A request needs a key; a tenant key uses the data plane for its own tasks
  only, an admin key the control plane and the operator views
  (ORCH-8003, ORCH-8005, ORCH-5124).

  Scenario: A request without a key is refused with a Bearer challenge
    Given an orchestratord with tenant keys "alpha" and "beta" and an admin key
    When "nobody" submits a task
    Then the answer is 401 with code "UNAUTHENTICATED"
    And the answer asks for a Bearer token

  Scenario: A tenant cannot see, stream or cancel another tenant's task
    Given an orchestratord with tenant keys "alpha" and "beta" and an admin key
    When "alpha" submits a task
    Then "beta" gets 404 for that task's status, stream and cancel
    And "alpha" gets 200 for that task's status

  Scenario Outline: Each role stays on its side
    Given an orchestratord with tenant keys "alpha" and "beta" and an admin key
    When "<who>" calls <method> <path>
    Then the answer is <status> with code "<code>"

    Examples:
      | who   | method | path                      | status | code      |
      | alpha | GET    | /v1/admin/status          | 403    | FORBIDDEN |
      | alpha | GET    | /v1/admin/tasks           | 403    | FORBIDDEN |
      | alpha | POST   | /v1/pools/main/drain      | 403    | FORBIDDEN |
      | alpha | GET    | /metrics                  | 403    | FORBIDDEN |
      | admin | POST   | /v1/tasks                 | 403    | FORBIDDEN |

  Scenario: An operator sees every tenant's tasks
    Given an orchestratord with tenant keys "alpha" and "beta" and an admin key
    When "alpha" submits a task
    And "beta" submits a task
    Then "admin" lists tasks of tenants "alpha" and "beta"
