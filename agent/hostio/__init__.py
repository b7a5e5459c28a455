"""Host-side I/O both ends use: files, chunk sink and read-ahead, writev, key files, TLS, tasks.

Installed as `shoal.hostio`. It imports only `shoal.protocol`; the agent daemon and the
controller library both build on it, and neither reaches into the other.
"""
