"""TLS contexts, certificates, fingerprints, and the token challenge.

A shared token never crosses the wire: the server sends a random challenge and the
client answers with an HMAC of it keyed with the token (as multiprocessing.connection
does), which the server checks with ``hmac.compare_digest``. The challenge is new for
every connection, so a recorded answer is worth nothing on another. With a users file,
each name has its own token; the file keeps, per name, a salt and the token stretched
with PBKDF2 (never the token itself), and the client stretches its token the same way
with the salt the server sends.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import ipaddress
import logging
import os
import secrets
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "AuthError",
    "CertificateError",
    "TokenGate",
    "Users",
    "answer_challenge",
    "check_certificate",
    "client_context",
    "fingerprint",
    "load_token",
    "make_certificate",
    "new_challenge",
    "server_context",
    "stretch",
    "verify_answer",
]

log = logging.getLogger("telex.server")

PBKDF2_ROUNDS = 200_000
DOMAIN = b"telex-auth-v1"


class CertificateError(Exception):
    """The server's certificate is not the one expected (pin, known host, expiry)."""


class AuthError(Exception):
    """A token could not be read, or was refused."""


# -- certificates --------------------------------------------------------------------------


def make_certificate(names: list[str], days: int = 825) -> tuple[bytes, bytes]:
    """A self-signed certificate and its key (PEM) for host names and IP addresses."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    alternatives: list[x509.GeneralName] = []
    for name in names:
        try:
            alternatives.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            alternatives.append(x509.DNSName(name))
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(alternatives), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return certificate.public_bytes(serialization.Encoding.PEM), key_pem


def default_names() -> list[str]:
    """This machine's host name, localhost and 127.0.0.1."""
    return list(dict.fromkeys([socket.gethostname(), "localhost", "127.0.0.1"]))


def write_certificate(prefix: Path, names: list[str], days: int = 825) -> str:
    """PREFIX.pem and PREFIX.key (readable by its owner only); returns the fingerprint."""
    cert_pem, key_pem = make_certificate(names, days)
    key_path = prefix.with_name(prefix.name + ".key")
    descriptor = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as key_file:
        key_file.write(key_pem)
    os.chmod(key_path, 0o600)
    prefix.with_name(prefix.name + ".pem").write_bytes(cert_pem)
    return fingerprint(cert_pem)


def fingerprint(certificate: bytes) -> str:
    """``SHA256:AB:CD:...`` of a certificate, given as PEM or DER."""
    der = (
        ssl.PEM_cert_to_DER_cert(certificate.decode())
        if b"-----BEGIN" in certificate
        else certificate
    )
    digest = hashlib.sha256(der).hexdigest().upper()
    return "SHA256:" + ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


def normal_fingerprint(text: str) -> str:
    """A fingerprint as typed (any case, with or without colons or the prefix), normalised."""
    hex_digits = text.upper().removeprefix("SHA256:").replace(":", "").strip()
    if len(hex_digits) != 64 or any(c not in "0123456789ABCDEF" for c in hex_digits):
        raise ValueError(f"{text!r} is not a SHA-256 fingerprint")
    return "SHA256:" + ":".join(hex_digits[i : i + 2] for i in range(0, 64, 2))


def check_certificate(der: bytes, pinned: str | None) -> str:
    """The certificate's fingerprint, after checking its dates and, if given, the pin."""
    from cryptography import x509

    certificate = x509.load_der_x509_certificate(der)
    now = datetime.datetime.now(datetime.UTC)
    if certificate.not_valid_after_utc < now:
        raise CertificateError(
            f"the server's certificate expired on {certificate.not_valid_after_utc:%Y-%m-%d}"
        )
    if certificate.not_valid_before_utc > now:
        raise CertificateError("the server's certificate is not valid yet")
    found = fingerprint(der)
    if pinned is not None and not hmac.compare_digest(found, normal_fingerprint(pinned)):
        raise CertificateError(f"the server's certificate is {found}, not the pinned {pinned}")
    return found


# -- TLS contexts --------------------------------------------------------------------------


def server_context(certfile: Path, keyfile: Path) -> ssl.SSLContext:
    """TLS 1.2 or newer, with this certificate and key."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(certfile, keyfile)
    return context


def client_context(*, cafile: Path | None = None, verify: bool = True) -> ssl.SSLContext:
    """TLS 1.2 or newer; verified against the system's trust store or ``cafile``.

    ``verify=False`` is for a pinned or remembered certificate, which the caller then
    checks itself (``check_certificate``), or for ``--insecure``.
    """
    context = ssl.create_default_context(cafile=cafile)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


# -- tokens and the challenge ---------------------------------------------------------------


def load_token(path: Path | None) -> str | None:
    """The token from a file (first line), else from TELEX_TOKEN; never from an argument."""
    if path is not None:
        try:
            token = path.read_text().splitlines()[0].strip() if path.stat().st_size else ""
        except OSError as exc:
            raise AuthError(f"cannot read the token file {path}: {exc.strerror or exc}") from exc
        except UnicodeDecodeError:
            raise AuthError(f"the token file {path} is not UTF-8 text") from None
        if not token:
            raise AuthError(f"the token file {path} is empty")
        return token
    token = os.environ.get("TELEX_TOKEN", "").strip()
    return token or None


def new_challenge() -> bytes:
    return secrets.token_bytes(32)


def stretch(token: str, salt: bytes) -> bytes:
    """The key a token gives: the token itself, or with a salt, PBKDF2 of it."""
    if not salt:
        return token.encode()
    return hashlib.pbkdf2_hmac("sha256", token.encode(), salt, PBKDF2_ROUNDS)


def answer_challenge(key: bytes, challenge: bytes) -> bytes:
    return hmac.new(key, DOMAIN + challenge, hashlib.sha256).digest()


def verify_answer(key: bytes, challenge: bytes, answer: bytes) -> bool:
    return hmac.compare_digest(answer_challenge(key, challenge), answer)


@dataclass(frozen=True, slots=True)
class User:
    name: str
    salt: bytes
    key: bytes


class Users:
    """The users file: one line a name, ``NAME SALT_HEX KEY_HEX`` (the key is PBKDF2 of the
    user's token with that salt; the token itself is not kept).

    A server reads it again when it changes (``refresh`` at each login), so ``telex user
    add`` and ``telex user remove`` take effect at the next login without a restart."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.users: dict[str, User] = {}
        self._stamp: tuple[int, int] | None = None
        if path.exists():
            self.users, self._stamp = self._read()

    def _read(self) -> tuple[dict[str, User], tuple[int, int]]:
        users: dict[str, User] = {}
        stat = self.path.stat()
        try:
            text = self.path.read_text()
        except UnicodeDecodeError:
            raise AuthError(f"the users file {self.path} is not UTF-8 text") from None
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip() or line.startswith("#"):
                continue
            try:
                name, salt, key = line.split()
                users[name] = User(name, bytes.fromhex(salt), bytes.fromhex(key))
            except ValueError as exc:
                raise AuthError(f"{self.path}:{number}: not NAME SALT KEY") from exc
        return users, (stat.st_mtime_ns, stat.st_size)

    def refresh(self) -> None:
        """Read the file again if it changed since; a file that went bad or away keeps
        the table last read (and says so in the log)."""
        try:
            stat = self.path.stat()
            if (stat.st_mtime_ns, stat.st_size) != self._stamp:
                self.users, self._stamp = self._read()
        except (OSError, UnicodeDecodeError, AuthError) as exc:
            log.warning("users file: %s: the users read before still hold", exc)

    def get(self, name: str | None) -> User | None:
        return None if name is None else self.users.get(name)

    def names(self) -> list[str]:
        return sorted(self.users)

    def add(self, name: str, token: str) -> None:
        """Add (or replace) ``name`` with its token, and write the file (owner only)."""
        salt = secrets.token_bytes(16)
        self.users[name] = User(name, salt, stretch(token, salt))
        self.save()

    def remove(self, name: str) -> bool:
        """Take ``name`` out and write the file; False if it was not there."""
        if self.users.pop(name, None) is None:
            return False
        self.save()
        return True

    def save(self) -> None:
        """Write the file whole (owner only), then put it in place: never half-written."""
        lines = [f"{u.name} {u.salt.hex()} {u.key.hex()}\n" for u in self.users.values()]
        partial = self.path.with_name(self.path.name + ".partial")
        descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as users_file:
            users_file.write("# telex users: NAME SALT PBKDF2-SHA256(token, salt)\n")
            users_file.writelines(lines)
        os.replace(partial, self.path)


# -- known hosts ---------------------------------------------------------------------------


class KnownHosts:
    """Fingerprints remembered on first use, as ssh's known_hosts: ``HOST:PORT FINGERPRINT``."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def get(self, address: str) -> str | None:
        if not self.path.exists():
            return None
        for line in self.path.read_text().splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[0] == address:
                return parts[1]
        return None

    def remember(self, address: str, found: str) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        kept = []
        if self.path.exists():
            kept = [
                line for line in self.path.read_text().splitlines() if line.split()[:1] != [address]
            ]
        self.path.write_text("".join(f"{line}\n" for line in [*kept, f"{address} {found}"]))


# -- the server's login checks ---------------------------------------------------------------


class TokenGate:
    """What a server checks at login: a shared token, or a users file's per-user keys.

    An unknown name gets a challenge it cannot answer, with a salt derived from a secret
    of this server and the name: the same for that name every time, and as random-looking
    as a real user's, so the answer tells no one which names exist.
    """

    def __init__(self, token: str | None = None, users: Users | None = None) -> None:
        self.token = token
        self.users = users
        self.required = token is not None or users is not None
        self._secret = secrets.token_bytes(32)

    def key_for(self, name: str | None) -> tuple[bytes, bytes] | None:
        """(key, salt) a client must prove: its own with a users file, else the token."""
        if self.users is not None:
            self.users.refresh()
        user = None if self.users is None else self.users.get(name)
        if user is not None:
            return user.key, user.salt
        if self.token is not None:
            return stretch(self.token, b""), b""
        return None

    def challenge(self, name: str | None) -> tuple[bytes, bytes, bytes]:
        found = self.key_for(name)
        if found is None:
            salt = hmac.new(self._secret, (name or "").encode(), hashlib.sha256).digest()[:16]
            found = (secrets.token_bytes(32), salt)
        key, salt = found
        return key, new_challenge(), salt

    def verify(self, key: bytes, challenge: bytes, answer: bytes) -> bool:
        return verify_answer(key, challenge, answer)

    def holds_token(self, key: bytes) -> bool:
        shared = None if self.token is None else stretch(self.token, b"")
        return shared is not None and hmac.compare_digest(key, shared)

    def text_login(self, line: str) -> tuple[bool, str | None]:
        """``AUTH <token>``, or ``AUTH <name> <token>`` for a name in the users file."""
        if self.users is not None:
            self.users.refresh()
        command, _, rest = line.strip().partition(" ")
        rest = rest.strip()
        if command != "AUTH" or not rest:
            return False, None
        name, _, token = rest.partition(" ")
        if self.users is None or self.users.get(name) is None or not token:
            name, token = "", rest
        found = self.key_for(name or None)
        if found is None:
            return False, None
        key, salt = found
        return hmac.compare_digest(stretch(token, salt), key), name or None
