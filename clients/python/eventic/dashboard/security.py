"""CSRF protection of the POST actions: a token only pages of this dashboard carry (a random
secret of the process, so another site cannot read or guess it), and an Origin header, when the
browser sends one, naming this host. The same secret signs the message shown after an action."""

import hmac
import os
from urllib.parse import parse_qs, urlsplit

from fastapi import Request

from .db import DbError


class Csrf:
    def __init__(self):
        self.token = os.urandom(24).hex()

    def sign(self, message: str) -> str:
        return hmac.new(self.token.encode(), message.encode(), "sha256").hexdigest()[:32]

    def verify(self, message: str | None, signature: str | None) -> bool:
        return bool(message and signature) and hmac.compare_digest(self.sign(message), signature)

    @staticmethod
    async def form(request: Request) -> dict[str, str]:
        """The url-encoded form of a POST (parsed here: no python-multipart dependency)."""
        body = (await request.body()).decode("utf-8", "replace")
        return {k: v[-1] for k, v in parse_qs(body, keep_blank_values=True).items()}

    def check(self, request: Request, form: dict[str, str]) -> None:
        origin = request.headers.get("origin")
        if origin and origin != "null" and urlsplit(origin).netloc != request.headers.get("host"):
            raise DbError(f"refused: the request came from another site ({origin})", "42501",
                          hint="Use the dashboard's own buttons.")
        if not hmac.compare_digest(form.get("csrf", ""), self.token):
            raise DbError("refused: the form's security token is missing or stale "
                          "(the dashboard was restarted?)", "42501", hint="Reload the page and try again.")
