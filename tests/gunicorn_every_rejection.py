"""gunicorn settings (``-c``) for the tests that expect one WARNING line per refused connection.

Those tests send many refused connections to one shared server, and the rejection log
bounds its lines per peer and reason (:mod:`proxyproto_mw.rejections`): lifted here, in the
master before it forks its workers. The bound itself is tested in ``tests/test_rejections.py``.
"""

import proxyproto_mw.policy as _policy

_policy.rejection_log.burst = _policy.rejection_log.budget = 1_000_000
