"""The project's fixed words: roles, channels, rater relations, wave kinds and statuses.

Kept free of SQLAlchemy so that pure modules (the instrument loader, the survey engine)
can share them with the models' check constraints.
"""

ROLES: tuple[str, ...] = (
    "manager",
    "deputy_manager",
    "nurse",
    "senior_care_worker",
    "care_worker",
    "ancillary",
    "proprietor",
)
"""Roster roles. `manager` is the registered manager; `proprietor` the owner."""

STAFF_ROLES: tuple[str, ...] = tuple(r for r in ROLES if r not in ("manager", "proprietor"))
"""Care-home staff: every role except the manager and the proprietor."""

CHANNELS: tuple[str, ...] = ("sms", "email")
RATER_RELATIONS: tuple[str, ...] = ("self", "staff", "line_manager", "peer")
WAVE_KINDS: tuple[str, ...] = ("baseline", "midpoint", "end", "follow_up", "pulse")
OUTBOX_PURPOSES: tuple[str, ...] = ("invitation", "reminder")
OUTBOX_STATUSES: tuple[str, ...] = (
    "queued",  # waiting for its time (not_before) and a dispatcher
    "sending",  # claimed by a dispatcher, provider being called
    "sent",  # the provider accepted it
    "failed",  # permanently refused, or given up after too many attempts
    "cancelled",  # no longer wanted: answered, opted out, wave closed
    "reconcile",  # a crash left it in doubt and the provider cannot tell: a person decides
)
INVITATION_STATUSES: tuple[str, ...] = (
    "pending",
    "sent",
    "delivered",
    "started",
    "completed",
    "failed",
    "opted_out",
    "expired",
)
ACCOUNT_ROLES: tuple[str, ...] = (
    "admin",  # everything, every programme
    "programme_lead",  # their programmes, including who has not answered
    "evaluator",  # aggregated, disclosure-controlled outputs of their programmes only
)
"""Roles of the people who sign in to carepulse (not roster roles: see ROLES)."""
AUDIT_ACTIONS: tuple[str, ...] = (
    "sign_in",  # an account signed in to the web pages
    "sign_in_failed",  # a refused sign-in (the address typed is never stored as typed)
    "sign_out",
    "roster_import",  # `carepulse import-roster`
    "programme_load",  # `carepulse load-programme`
    "report_view",  # the dashboard's report page
    "report_export",  # a table as CSV, the workbook, `carepulse report --out`
    "api_pull",  # a JSON API call that returned report figures
    "wide_export",  # the pseudonymised analysis file (dashboard or `report --wide`)
    "manager_report_view",  # one manager's confidential 360 report
    "manager_links",  # `carepulse manager-links` printed the personal report links
    "account_add",
    "account_remove",
    "account_password",  # a new password set for an account
    "token_issue",
    "token_revoke",
    "person_erase",
    "subject_access_export",
    "retention_purge",
    "audit_export",  # the audit log itself was exported (CSV): who watches the watchers
)
"""What the audit log records. Checked by `storage.audit.record`, not by the database:
a CHECK constraint would need a table rebuild on SQLite for every new word, and that
rebuild would drop the append-only triggers."""
