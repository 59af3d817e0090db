Feature: Sessions
  A task with a session_id opens or continues that session; the session can
  be inspected and deleted (ORCH-1401, ORCH-1403).

  Scenario: A session counts its turns and can be deleted
    Given an orchestratord with a mock pool
    When I run 2 tasks in one session on pool "main"
    Then the session reports 2 turns and tokens out
    When I delete the session
    Then the session is gone
