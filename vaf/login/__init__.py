"""Grid-credential login to the access node: X.509 over HTTPS, then ssh with a short grant.

``vaf login-server`` (:mod:`vaf.login.server`) verifies the client certificate in the TLS
handshake, maps its DN to a local account (:mod:`vaf.login.mapping`), creates the account when
missing (:mod:`vaf.login.accounts`) and grants ssh access for a limited time
(:mod:`vaf.login.grants`): an OpenSSH user certificate, or an ``authorized_keys`` entry with
``expiry-time``. ``vaf login`` (:mod:`vaf.login.client`) is the physicist's side.
"""
