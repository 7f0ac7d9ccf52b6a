"""careloop's web dashboard, served by the CDS Hooks app: worklist, patient pages, model, monitoring, governance.

    from careloop.web import mount, load_users
    mount(app, service, users=load_users("users.yaml"), monitor_dir=Path("monitor"), store_dir=Path("store"))

Sign-in with roles (clinician, data_scientist, governance), signed HttpOnly SameSite=Strict session cookies,
scrypt password hashes, CSRF tokens on every form; see `careloop.web.app` for the pages and who may see them.
"""

from careloop.web.app import ACCESS, PREFIX, Dashboard, mount
from careloop.web.auth import ROLES, DashboardConfigError, hash_password, load_users, verify_password
from careloop.web.demo import DEMO_PASSWORD, demo_users

__all__ = ["ACCESS", "DEMO_PASSWORD", "PREFIX", "ROLES", "Dashboard", "DashboardConfigError", "demo_users",
           "hash_password", "load_users", "mount", "verify_password"]
