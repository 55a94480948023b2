"""``lilypad serve`` (:mod:`lilypad.web.serve`): the local HTTP API and the dashboard, against the
real chain, solver, IPFS node and providers of ``tests/creator/conftest.py``, served by a real
uvicorn, read by httpx and by Debian's headless chromium (through its chromedriver)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.server
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from httpx_sse import connect_sse
from PIL import Image

from lilypad.chain.anvil import free_port
from lilypad.client import Client
from lilypad.creator import load_records
from lilypad.web.serve import COOKIE, create_app
from tests.browser import chromium, screenshot
from tests.conftest import CliRunner
from tests.creator.conftest import Creator, cowsay
from tests.provider.conftest import wait_for
from tests.test_file_inputs import ENTRYPOINT, MANIFEST

TOKEN = "test-token-" + "x" * 20
COWSAY = "cowsay:v0.0.4"


class Served:
    """``create_app`` on a real uvicorn in a thread."""

    def __init__(self, client: Client) -> None:
        self.port = free_port()
        config = uvicorn.Config(
            create_app(
                client, token=TOKEN, webhook_secret="whsec_" + base64.b64encode(b"k" * 24).decode()
            ),
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            lifespan="off",
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Served:
        self.thread.start()
        wait_for(lambda: self.server.started or None, 10)
        return self

    def __exit__(self, *_: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture
def served(creator: Creator) -> Iterator[Served]:
    creator.world.profile()
    client = Client("test", key=creator.account.key.hex())
    with Served(client) as server:
        yield server


@pytest.fixture
def api(served: Served) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=served.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30
    ) as client:
        yield client


def _until_done(api: httpx.Client, job_id: str, seconds: float = 120) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        view: dict[str, Any] = api.get(f"/v1/predictions/{job_id}").json()
        return view if view["status"] in ("succeeded", "failed", "canceled") else None

    view = wait_for(done, seconds)
    assert view is not None
    return view


# ------------------------------------------------------------------------------- the door
def test_every_request_needs_the_token_and_the_loopback_host(served: Served) -> None:
    with httpx.Client(base_url=served.url) as anyone:
        assert anyone.get("/v1/predictions").status_code == 401
        assert (
            anyone.get("/v1/predictions", headers={"Authorization": "Bearer nope"}).status_code
            == 401
        )
        assert anyone.get("/").status_code == 401  # the page says to open the printed URL
        assert "Open the address" in anyone.get("/").text
        body = {"version": COWSAY}
        assert anyone.post("/v1/predictions", json=body).status_code == 401
        # DNS rebinding: a page of evil.example resolved to 127.0.0.1 names its own host
        rebound = anyone.get(
            "/v1/predictions",
            headers={"Host": "evil.example", "Authorization": f"Bearer {TOKEN}"},
        )
        assert rebound.status_code == 400
        # the dashboard's cookie alone cannot make a change: a form of another site could send it
        anyone.cookies.set(COOKIE, TOKEN)
        assert anyone.get("/v1/predictions").status_code == 200
        assert anyone.post("/v1/predictions", json=body).status_code == 403
    assert load_records() == []  # nothing was posted


def test_opening_the_printed_url_sets_the_cookie_and_drops_the_token(served: Served) -> None:
    with httpx.Client(base_url=served.url) as browser:
        answer = browser.get(f"/?token={TOKEN}")
        assert answer.status_code == 303
        assert answer.headers["location"] == "/"
        assert "samesite=strict" in answer.headers["set-cookie"].lower()
        assert "httponly" in answer.headers["set-cookie"].lower()
        assert browser.get("/").status_code == 200
        assert browser.get("/?token=wrong").status_code == 401


# ------------------------------------------------------------------------------- the API
def test_a_job_posted_as_json_runs_and_its_outputs_are_served(
    creator: Creator, api: httpx.Client
) -> None:
    creator.world.provider(creator.world.net.providers[0])

    answer = api.post(
        "/v1/predictions",
        json={"version": COWSAY, "input": {"Message": "over HTTP"}, "verify": "never"},
    )

    assert answer.status_code == 201, answer.text
    created = answer.json()
    assert answer.headers["location"] == f"/v1/predictions/{created['id']}"
    assert created["status"] == "starting"
    done = _until_done(api, created["id"])
    assert done["status"] == "succeeded"
    assert done["state"] == "accepted"
    assert done["output"]["files"] == ["outputs/cowsay.txt"]
    assert done["output"]["urls"]["outputs/cowsay.txt"].startswith(creator.world.ipfs.gateway_url)
    text = api.get(done["output"]["local_urls"]["outputs/cowsay.txt"]).text
    assert "< over HTTP >" in text
    assert {"posted", "deal", "accepted"} <= set(done["metrics"])
    assert [p["id"] for p in api.get("/v1/predictions").json()["results"]] == [created["id"]]
    escape = api.get(f"/v1/predictions/{created['id']}/files/../../../etc/passwd")
    assert escape.status_code == 404


def test_jobs_past_the_memory_bound_are_read_from_their_records(
    creator: Creator, served: Served, api: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("lilypad.web.serve.KEPT", 1)
    creator.world.provider(creator.world.net.providers[0])
    body = {"version": COWSAY, "input": {"Message": "first"}, "verify": "never"}
    first = api.post("/v1/predictions", json=body).json()
    _until_done(api, first["id"])
    second = api.post("/v1/predictions", json=body | {"input": {"Message": "second"}}).json()

    kept = served.server.config.app.state.server.predictions
    assert list(kept) == [second["id"]]  # the first, ended, is no longer held
    again = api.get(f"/v1/predictions/{first['id']}").json()
    assert again["status"] == "succeeded"
    assert "< first >" in api.get(again["output"]["local_urls"]["outputs/cowsay.txt"]).text
    _until_done(api, second["id"])


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({"version": COWSAY, "input": {"Mesage": "hi"}}, "Message"),
        ({"version": COWSAY, "input": {"Message": 3}}, "not a JSON string"),
        ({"version": "cowsay:v9.9.9"}, "v9.9.9"),
        ({"version": COWSAY, "max_price": "lots"}, "max_price 'lots'"),
        ({"version": COWSAY, "webhook": "file:///etc/passwd"}, "not an http"),
        ({"version": COWSAY, "webhook_events_filter": ["logs"]}, "'logs' is not an event"),
        ({"version": COWSAY, "surprise": 1}, "surprise"),
        ({"input": {}}, "version"),
    ],
)
def test_a_bad_request_is_422_naming_the_value(
    api: httpx.Client, body: dict[str, Any], says: str
) -> None:
    answer = api.post("/v1/predictions", json=body)
    assert answer.status_code == 422, answer.text
    assert says in answer.json()["detail"]
    assert load_records() == []


def test_the_event_stream_gives_every_step_then_done(creator: Creator, api: httpx.Client) -> None:
    creator.world.provider(creator.world.net.providers[0])
    created = api.post(
        "/v1/predictions",
        json={"version": COWSAY, "input": {"Message": "streamed"}, "verify": "never"},
    ).json()

    kinds, names, done = [], [], None
    with connect_sse(api, "GET", created["urls"]["stream"], timeout=120) as source:
        for event in source.iter_sse():
            kinds.append(event.event)
            data = event.json()
            if event.event == "step":
                names.append(data["name"])
            if event.event == "done":
                done = data
                break

    assert names.index("posted") < names.index("deal") < names.index("accepted")
    assert done is not None
    assert done["status"] == "succeeded"
    assert kinds[-1] == "done"


def test_a_job_another_process_follows_streams_its_record_until_done(
    creator: Creator, api: httpx.Client
) -> None:
    creator.world.provider(creator.world.net.providers[0])
    other = Client("test", key=creator.account.key.hex())  # lilypad run --detach, elsewhere
    posted = other.prepare(COWSAY, Message="elsewhere", verify="never")
    record = posted.post()
    posted.close()
    follower = threading.Thread(target=lambda: other.job(record.job_offer_id or "").wait())

    states, done = [], None
    with connect_sse(
        api, "GET", f"/v1/predictions/{record.job_offer_id}/events", timeout=120
    ) as source:
        follower.start()  # lilypad jobs wait, in that other process
        for event in source.iter_sse():
            if event.event == "step":
                states.append(event.json()["name"])
            if event.event == "done":
                done = event.json()
                break
    follower.join(60)

    assert states[0] == "created"
    assert states[-1] == "accepted"
    assert done is not None
    assert done["status"] == "succeeded"
    assert done["output"]["files"] == ["outputs/cowsay.txt"]


def test_a_webhook_gets_the_completed_prediction_signed(
    creator: Creator, api: httpx.Client
) -> None:
    creator.world.provider(creator.world.net.providers[0])
    received: list[tuple[dict[str, str], bytes]] = []
    hook = _receiver(received)
    try:
        created = api.post(
            "/v1/predictions",
            json={
                "version": COWSAY,
                "input": {"Message": "hooked"},
                "verify": "never",
                "webhook": f"http://127.0.0.1:{hook.server_address[1]}/hook",
                "webhook_events_filter": ["start", "completed"],
            },
        ).json()
        wait_for(lambda: len(received) >= 2 or None, 120)
    finally:
        hook.shutdown()
        hook.server_close()

    secret = api.get("/v1/webhooks/default/secret").json()["key"]
    key = base64.b64decode(secret.removeprefix("whsec_"))
    bodies = []
    for headers, body in received:
        signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
        expected = "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
        assert headers["webhook-signature"] == expected
        bodies.append(json.loads(body))
    assert [b["id"] for b in bodies] == [created["id"]] * 2
    assert bodies[-1]["status"] == "succeeded"
    assert bodies[-1]["output"]["cid"] == bodies[-1]["result_cid"]


def test_a_multipart_upload_is_staged_and_a_pending_job_cancelled(
    creator: Creator, api: httpx.Client, tmp_path: Path
) -> None:
    module = tmp_path / "picture"
    module.mkdir()
    (module / "lilypad_module.toml").write_text(MANIFEST)
    (module / "picture.py").write_text(ENTRYPOINT)
    photo = tmp_path / "photo.png"
    Image.new("RGB", (40, 30), (200, 30, 30)).save(photo)
    absent = creator.world.net.providers[2].address  # nobody runs: the offer stays pending
    form = {
        "version": str(module),
        "input": json.dumps({"Steps": 2}),
        "options": json.dumps({"target": absent, "verify": "never"}),
    }

    bad = api.post("/v1/predictions", data=form, files={"Image": ("x.png", b"not a picture")})
    sneaky = api.post(  # a file name is only a name: never a path out of the upload's folder
        "/v1/predictions", data=form, files={"Image": ("../../evil.png", photo.read_bytes())}
    )
    assert sneaky.status_code == 201, sneaky.text
    assert sneaky.json()["input"]["Image"].startswith("<upload evil.png,")
    api.post(sneaky.json()["urls"]["cancel"])
    assert bad.status_code == 422
    assert "Image" in bad.json()["detail"]
    answer = api.post(
        "/v1/predictions", data=form, files={"Image": ("photo.png", photo.read_bytes())}
    )

    assert answer.status_code == 201, answer.text
    created = answer.json()
    assert created["input"]["Image"] == f"<upload photo.png, {photo.stat().st_size} bytes>"
    record = next(r for r in load_records() if r.job_offer_id == created["id"])
    assert str(record.tunables["Image"]).endswith("/photo.png")  # staged under its own name
    cancelled = api.post(created["urls"]["cancel"]).json()
    assert cancelled["status"] == "canceled"
    assert "no funds moved" in cancelled["error"]


def test_the_api_is_described_by_its_openapi_page(api: httpx.Client) -> None:
    spec = api.get("/openapi.json").json()
    create = spec["paths"]["/v1/predictions"]["post"]
    assert set(create["requestBody"]["content"]) == {"application/json", "multipart/form-data"}
    for path in (
        "/v1/predictions/{prediction_id}/events",
        "/v1/modules/{ref}/schema",
        "/v1/network",
    ):
        assert path in spec["paths"]
    schema = api.get(f"/v1/modules/{COWSAY}/schema").json()
    assert schema["properties"]["Message"]["type"] == "string"


def test_every_built_in_module_version_has_a_form(served: Served) -> None:
    from lilypad import modules
    from lilypad.modules.schema import input_schema

    with httpx.Client(base_url=served.url, cookies={COOKIE: TOKEN}) as browser:
        home = browser.get("/").text
        for manifest, _ in modules.list_builtin():
            for version in manifest.versions:
                ref = f"{manifest.name}:{version}"
                assert f'href="/modules/{ref}"' in home
                page = browser.get(f"/modules/{ref}")
                assert page.status_code == 200, ref
                for name in input_schema(modules.resolve(ref))["properties"]:
                    assert f'id="in-{name}"' in page.text, (ref, name)
        assert browser.get("/modules/cowsay:v9.9.9").status_code == 404


def test_the_solver_shows_the_network_read_only(creator: Creator) -> None:
    world = creator.world
    provider = world.net.providers[0]
    world.provider(provider)
    Creator(world, world.net.creators[1]).run(cowsay("for the books"))
    with httpx.Client(base_url=world.server.url) as anyone:  # no key, no token: public data
        assert anyone.get("/").headers.get("location") == "/dashboard"

        def shows_the_deal() -> httpx.Response | None:
            page = anyone.get("/dashboard")
            assert page.status_code == 200
            return page if "accepted" in page.text else None  # the deal, in the recent deals

        # The creator's run returns once its acceptance is mined; the solver sees it a poll later.
        page = wait_for(shows_the_deal)
        assert provider.address in page.text
        assert "<form" not in page.text  # nothing to run or change from here
        assert anyone.get("/static/style.css").status_code == 200


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("--host", "0.0.0.0"), "not a loopback address"),
        (("--host", "example.org"), "not an IP address"),
        (("--port", "70000"), "--port 70000 is out of range"),
    ],
)
def test_serve_refuses_a_public_host_or_a_bad_port(
    cli: CliRunner, args: tuple[str, ...], says: str
) -> None:
    result = cli("serve", *args)
    assert result.exit_code == 2
    assert says in result.stderr


# ------------------------------------------------------------------------------- the browser
def test_the_dashboard_runs_cowsay_from_its_form_and_shows_the_result(
    creator: Creator, served: Served
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    provider = creator.world.net.providers[0]
    creator.world.provider(provider)
    with chromium() as browser:
        browser.get(f"{served.url}/?token={TOKEN}")
        providers = browser.find_element(By.ID, "providers").text
        assert provider.address in providers
        screenshot(browser, "home")
        browser.find_element(By.LINK_TEXT, "v0.0.4").click()
        field = browser.find_element(By.ID, "in-Message")
        field.clear()
        field.send_keys("from a browser")
        browser.find_element(By.CSS_SELECTOR, "select[name=verify] option[value=never]").click()
        browser.find_element(By.ID, "run").click()

        WebDriverWait(browser, 120).until(
            lambda b: b.find_element(By.ID, "status").text == "succeeded"
        )
        steps = browser.find_element(By.ID, "steps").text
        assert "offer posted" in steps
        assert "result accepted on chain" in steps
        WebDriverWait(browser, 20).until(
            lambda b: "< from a browser >" in b.find_element(By.CSS_SELECTOR, "figure pre").text
        )
        cid = browser.find_element(By.ID, "cid").text
        assert cid.startswith("bafy")
        screenshot(browser, "cowsay-job")


def _receiver(received: list[tuple[dict[str, str], bytes]]) -> http.server.ThreadingHTTPServer:
    class Hook(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["content-length"]))
            received.append(({k.lower(): v for k, v in self.headers.items()}, body))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *_: object) -> None:
            return

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    time.sleep(0.05)
    return server
