"""A real OAuth 2.0 authorization server for the tests, built on oauthlib.

oauthlib (https://github.com/oauthlib/oauthlib) implements the protocol: the authorization
code grant with PKCE (RFC 7636), refresh tokens, client authentication and the error
answers (invalid_grant, invalid_client, ...). This file only stores grants in memory,
serves oauthlib's endpoints over HTTP and adds controls a test needs:

  GET  /authorize          consent is automatic for the configured user; redirects
  POST /token              oauthlib's token endpoint
  GET  /userinfo           bearer-protected: {"sub", "email"}
  POST /_control/config    {"refresh_mode": "rotate"|"omit"|"same", "expires_in": N, "user": U}
  POST /_control/revoke    revoke every refresh token of {"user": U} (the user disconnected)
  POST /_control/fail      {"answers": [{"status": 503}, {"status": 400, "error": "..."}]}:
                           the next token requests get these answers, one each, in order
  GET  /_control/stats     what the server saw

Usage: server.py CLIENT_ID CLIENT_SECRET AUTH_METHOD(basic|body)
Prints "LISTENING <port>" once it accepts connections.
"""

import json
import os
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace
from urllib.parse import parse_qs

os.environ["OAUTHLIB_INSECURE_TRANSPORT"] = "1"  # plain HTTP on 127.0.0.1 only

from oauthlib.oauth2 import RequestValidator, WebApplicationServer  # noqa: E402

CLIENT_ID, CLIENT_SECRET, AUTH_METHOD = sys.argv[1], sys.argv[2], sys.argv[3]
LOCK = threading.Lock()
STATE = {
    "config": {"refresh_mode": "rotate", "expires_in": 3600, "user": "user-1"},
    "codes": {},
    "access": {},
    "refresh": {},
    "fail": [],
    "stats": {
        "authorize": 0,
        "token_requests": {},
        "token_errors": {},
        "client_auth": [],
        "pkce_checked": 0,
        "userinfo": 0,
        "refresh_tokens_seen": [],
    },
}


class Validator(RequestValidator):
    def _client(self, request, client_id):
        request.client = SimpleNamespace(client_id=client_id)
        request.client_id = client_id

    def validate_client_id(self, client_id, request, *args, **kwargs):
        return client_id == CLIENT_ID

    def validate_redirect_uri(self, client_id, redirect_uri, request, *args, **kwargs):
        return redirect_uri.startswith("http://127.0.0.1:")

    def get_default_redirect_uri(self, client_id, request, *args, **kwargs):
        return None

    def validate_scopes(self, client_id, scopes, client, request, *args, **kwargs):
        return True

    def get_default_scopes(self, client_id, request, *args, **kwargs):
        return ["openid"]

    def validate_response_type(self, client_id, response_type, client, request, *args, **kwargs):
        return response_type == "code"

    def is_pkce_required(self, client_id, request):
        return True

    def save_authorization_code(self, client_id, code, request, *args, **kwargs):
        STATE["codes"][code["code"]] = {
            "client_id": client_id,
            "redirect_uri": request.redirect_uri,
            "scopes": request.scopes,
            "user": request.user,
            "challenge": request.code_challenge,
            "method": request.code_challenge_method,
        }

    def get_code_challenge(self, code, request):
        c = STATE["codes"].get(code)
        if c:
            STATE["stats"]["pkce_checked"] += 1
            return c["challenge"]
        return None

    def get_code_challenge_method(self, code, request):
        c = STATE["codes"].get(code)
        return c["method"] if c else None

    def client_authentication_required(self, request, *args, **kwargs):
        return True

    def authenticate_client(self, request, *args, **kwargs):
        method = None
        client_id = secret = None
        if request.headers.get("Authorization", "").startswith("Basic "):
            import base64
            from urllib.parse import unquote_plus

            raw = base64.b64decode(request.headers["Authorization"][6:]).decode()
            user, _, password = raw.partition(":")
            client_id, secret, method = unquote_plus(user), unquote_plus(password), "basic"
        elif request.client_secret is not None:
            client_id, secret, method = request.client_id, request.client_secret, "body"
        STATE["stats"]["client_auth"].append(method)
        if method != AUTH_METHOD or client_id != CLIENT_ID or secret != CLIENT_SECRET:
            return False
        self._client(request, client_id)
        return True

    def authenticate_client_id(self, client_id, request, *args, **kwargs):
        return False

    def validate_code(self, client_id, code, client, request, *args, **kwargs):
        c = STATE["codes"].get(code)
        if not c or c["client_id"] != client_id:
            return False
        request.user = c["user"]
        request.scopes = c["scopes"]
        return True

    def confirm_redirect_uri(self, client_id, code, redirect_uri, client, request, *args, **kwargs):
        c = STATE["codes"].get(code)
        return bool(c) and c["redirect_uri"] == redirect_uri

    def validate_grant_type(self, client_id, grant_type, client, request, *args, **kwargs):
        return grant_type in ("authorization_code", "refresh_token")

    def invalidate_authorization_code(self, client_id, code, request, *args, **kwargs):
        STATE["codes"].pop(code, None)

    def save_bearer_token(self, token, request, *args, **kwargs):
        STATE["access"][token["access_token"]] = {"user": request.user, "scopes": request.scopes}
        new_refresh = token.get("refresh_token")
        if new_refresh and new_refresh not in STATE["refresh"]:
            STATE["refresh"][new_refresh] = {
                "user": request.user,
                "scopes": request.scopes,
                "client_id": request.client_id,
                "revoked": False,
            }
        if request.grant_type == "refresh_token" and new_refresh != request.refresh_token:
            # rotation: the old refresh token is spent
            STATE["refresh"][request.refresh_token]["revoked"] = True

    def rotate_refresh_token(self, request):
        return STATE["config"]["refresh_mode"] == "rotate"

    def validate_refresh_token(self, refresh_token, client, request, *args, **kwargs):
        STATE["stats"]["refresh_tokens_seen"].append(refresh_token)
        r = STATE["refresh"].get(refresh_token)
        if not r or r["revoked"] or r["client_id"] != client.client_id:
            return False
        request.user = r["user"]
        return True

    def get_original_scopes(self, refresh_token, request, *args, **kwargs):
        return STATE["refresh"][refresh_token]["scopes"]

    def is_within_original_scope(self, request_scopes, refresh_token, request, *args, **kwargs):
        return set(request_scopes) <= set(STATE["refresh"][refresh_token]["scopes"])

    def validate_bearer_token(self, token, scopes, request):
        a = STATE["access"].get(token)
        if not a:
            return False
        request.user = a["user"]
        request.scopes = a["scopes"]
        return True


SERVER = WebApplicationServer(
    Validator(), token_expires_in=lambda request: STATE["config"]["expires_in"]
)


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def _uri(self):
        return "http://%s:%d%s" % (self.server.server_address[0], self.server.server_address[1], self.path)

    def _body(self):
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n).decode() if n else ""

    def _send(self, status, headers, body):
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        data = (body or "").encode()
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _json(self, status, obj):
        self._send(status, {"Content-Type": "application/json"}, json.dumps(obj))

    def do_GET(self):
        with LOCK:
            path = self.path.split("?")[0]
            if path == "/authorize":
                STATE["stats"]["authorize"] += 1
                try:
                    scopes, credentials = SERVER.validate_authorization_request(
                        self._uri(), "GET", None, dict(self.headers)
                    )
                except Exception as e:  # oauthlib's OAuth2Error: refused request
                    return self._json(400, {"error": getattr(e, "error", "invalid_request")})
                credentials["user"] = STATE["config"]["user"]
                headers, body, status = SERVER.create_authorization_response(
                    self._uri(), "GET", None, dict(self.headers), scopes, credentials
                )
                return self._send(status, headers, body)
            if path == "/userinfo":
                STATE["stats"]["userinfo"] += 1
                valid, req = SERVER.verify_request(self._uri(), "GET", None, dict(self.headers), [])
                if not valid:
                    return self._json(401, {"error": "invalid_token"})
                return self._json(200, {"sub": req.user, "email": req.user + "@example.test"})
            if path == "/_control/stats":
                return self._json(200, STATE["stats"])
            self._json(404, {"error": "not_found"})

    def do_POST(self):
        with LOCK:
            path = self.path.split("?")[0]
            body = self._body()
            if path == "/token":
                grant = (parse_qs(body).get("grant_type") or ["?"])[0]
                counts = STATE["stats"]["token_requests"]
                counts[grant] = counts.get(grant, 0) + 1
                if STATE["fail"]:
                    fail = STATE["fail"].pop(0)
                    error = fail.get("error")
                    payload = json.dumps({"error": error}) if error else "<html>unavailable</html>"
                    return self._send(fail["status"], {"Content-Type": "application/json"}, payload)
                headers, out, status = SERVER.create_token_response(
                    self._uri(), "POST", body, dict(self.headers), None
                )
                if status != 200:
                    err = json.loads(out).get("error", "?")
                    errors = STATE["stats"]["token_errors"]
                    errors[err] = errors.get(err, 0) + 1
                elif grant == "refresh_token" and STATE["config"]["refresh_mode"] == "omit":
                    # like Google: no refresh token in a refresh answer; the old one stays valid
                    answer = json.loads(out)
                    answer.pop("refresh_token", None)
                    out = json.dumps(answer)
                return self._send(status, headers, out)
            control = json.loads(body or "{}")
            if path == "/_control/config":
                STATE["config"].update(control)
                return self._json(200, STATE["config"])
            if path == "/_control/revoke":
                n = 0
                for r in STATE["refresh"].values():
                    if r["user"] == control["user"] and not r["revoked"]:
                        r["revoked"] = True
                        n += 1
                return self._json(200, {"revoked": n})
            if path == "/_control/fail":
                STATE["fail"] = list(control["answers"])
                return self._json(200, {"queued": len(STATE["fail"])})
            self._json(404, {"error": "not_found"})


def main():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    print("LISTENING %d" % httpd.server_address[1], flush=True)
    # stop when the test process goes away (stdin closes)
    threading.Thread(target=lambda: (sys.stdin.read(), os._exit(0)), daemon=True).start()
    httpd.serve_forever()


if __name__ == "__main__":
    main()
