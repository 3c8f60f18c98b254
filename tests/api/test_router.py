"""The plain-HTTP route table: method and path pattern to handler, 404 and 405 with `Allow`."""

from __future__ import annotations

import orjson
import pytest

from sohbet.api.router import ANY_METHOD, RouteHandler, Router
from sohbet.ws.http11 import Request, Response


def request(method: str, path: str) -> Request:
    return Request(method=method, path=path, query="", version="1.1", headers=(("host", "x"),))


def answer(name: str) -> RouteHandler:
    """A handler that says who answered, and with which params."""

    def handler(req: Request, params: dict[str, str]) -> Response:
        return Response(200, orjson.dumps({"by": name, "params": params}))

    return handler


def routed(router: Router, method: str, path: str) -> tuple[int, dict[str, object], tuple[tuple[str, str], ...]]:
    _, response = router.dispatch(request(method, path))
    assert isinstance(response, Response)
    return response.status, orjson.loads(response.body), response.headers


@pytest.fixture
def router() -> Router:
    r = Router()
    r.add("GET", "/healthz", answer("health"))
    r.add(ANY_METHOD, "/ws", answer("any"))
    r.add("GET", "/api/conversations/{id}/messages", answer("history"))
    r.add("POST", "/api/conversations/{id}/messages", answer("send"))
    r.add("DELETE", "/api/conversations/{id}/members/{user_id}", answer("remove"))
    return r


def test_static_and_any_method_routes(router: Router) -> None:
    assert routed(router, "GET", "/healthz")[:2] == (200, {"by": "health", "params": {}})
    assert routed(router, "PUT", "/ws")[:2] == (200, {"by": "any", "params": {}})


def test_patterns_pass_their_segments_as_params(router: Router) -> None:
    assert routed(router, "GET", "/api/conversations/12/messages")[1] == {"by": "history", "params": {"id": "12"}}
    assert routed(router, "POST", "/api/conversations/12/messages")[1]["by"] == "send"
    assert routed(router, "DELETE", "/api/conversations/7/members/b%20%C3%B6b%2Fx")[1] == {
        "by": "remove",
        "params": {"id": "7", "user_id": "b öb/x"},  # percent-decoded, a slash included
    }


@pytest.mark.parametrize("user", ["%FF", "%", "a%2", "%%32", "%zz"], ids=["not-utf8", "alone", "short", "twice", "hex"])
def test_a_param_that_is_not_percent_encoded_utf8_is_400(router: Router, user: str) -> None:
    status, body, _ = routed(router, "DELETE", f"/api/conversations/7/members/{user}")
    assert status == 400
    assert body == {"error": {"code": "bad_request", "message": "the path is not percent-encoded UTF-8"}}


def test_dispatch_names_the_route_for_metrics(router: Router) -> None:
    assert router.dispatch(request("GET", "/api/conversations/12/messages"))[0] == "/api/conversations/{id}/messages"
    assert router.dispatch(request("GET", "/healthz"))[0] == "/healthz"
    assert router.dispatch(request("PATCH", "/healthz"))[0] == "/healthz"  # a 405 still names its route
    assert router.dispatch(request("GET", "/nope"))[0] == "unmatched"  # never the path: metrics stay bounded


def test_head_is_answered_by_the_get_route(router: Router) -> None:
    assert routed(router, "HEAD", "/healthz")[:2] == (200, {"by": "health", "params": {}})
    status, _, headers = routed(router, "HEAD", "/api/conversations/{id}/members/x".replace("{id}", "3"))
    assert (status, headers) == (405, (("Allow", "DELETE"),))  # no GET there: no HEAD either


def test_routes_lists_every_method_and_pattern(router: Router) -> None:
    assert router.routes == [
        ("GET", "/healthz"),
        ("*", "/ws"),
        ("GET", "/api/conversations/{id}/messages"),
        ("POST", "/api/conversations/{id}/messages"),
        ("DELETE", "/api/conversations/{id}/members/{user_id}"),
    ]


@pytest.mark.parametrize(
    "path",
    ["/nope", "/healthz/", "/api/conversations//messages", "/api/conversations/1/2/messages", "/api/conversations/1"],
)
def test_unrouted_paths_are_404(router: Router, path: str) -> None:
    status, body, _ = routed(router, "GET", path)
    assert (status, body) == (404, {"error": {"code": "not_found", "message": "no such endpoint"}})


def test_a_method_not_routed_is_405_with_allow(router: Router) -> None:
    status, body, headers = routed(router, "PATCH", "/api/conversations/3/messages")
    assert status == 405
    assert headers == (("Allow", "GET, HEAD, POST"),)
    assert body == {"error": {"code": "bad_request", "message": "PATCH is not allowed here; use GET, HEAD, POST"}}
    assert routed(router, "POST", "/healthz")[0] == 405


def test_a_route_added_twice_is_refused(router: Router) -> None:
    with pytest.raises(ValueError, match="GET /healthz is routed twice"):
        router.add("GET", "/healthz", answer("again"))
    with pytest.raises(ValueError, match=r"POST /api/conversations/\{id\}/messages is routed twice"):
        router.add("POST", "/api/conversations/{id}/messages", answer("again"))


def test_a_route_for_the_method_wins_over_one_for_any_method() -> None:
    router = Router()
    router.add(ANY_METHOD, "/both", answer("any"))
    router.add("GET", "/both", answer("get"))
    assert routed(router, "GET", "/both")[1]["by"] == "get"
    assert routed(router, "POST", "/both")[1]["by"] == "any"
