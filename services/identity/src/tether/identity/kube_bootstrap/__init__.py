"""`tether-identity kube-bootstrap`: the Job that gives a fresh cluster its mesh credentials.

Creates in the control plane's namespace, each only if absent (GET by name; POST on 404; on 409, a
concurrent run won and its object is read and kept), and never changes an object that exists:

- Secret ``tether-identity-issuer`` (``kubernetes.io/tls``: ``tls.crt`` issuer, ``tls.key``, ``ca.crt`` trust
  anchor), unless ``--skip-issuer``. One the user brought (e.g. cert-manager's) is kept as it is. The
  generated anchor's key is not stored anywhere: rotating the issuer means a new anchor too.
- ConfigMap ``tether-trust-roots`` (``ca-bundle.crt``): the issuer Secret's ``ca.crt``, whoever made it.
- Secret ``tether-nats-server``: ``auth.conf`` (an nkey user per role with its permissions from
  :data:`tether.shared.permissions.ROLES`), ``tls.crt``/``tls.key`` for client and route TLS, ``ca.crt``. The
  NATS CA's key is dropped once the server certificate is signed.
- Secret ``tether-nats-<role>`` per ``--nats-roles``: ``nkey.seed`` and ``ca.crt``.

The NATS Secrets belong together. When some exist and others do not (a run that died half-way, a Secret
deleted by hand, a role added to ``--nats-roles``), the Job says so and exits 1 rather than issue
credentials the server does not know; recovery is to delete all of them and rerun the Job, then restart
the NATS pods and the control plane.

No secret material is ever logged or passed on a command line; the requests made are listed in
:mod:`tether.identity.kube_bootstrap.api`.
"""
