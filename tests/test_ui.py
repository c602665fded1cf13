"""The dashboard in a real browser: Debian's Chromium driven by Playwright against one real stack.

One gateway (uvicorn thread, tiny student), one worker process and the session's llama.cpp teacher are
shared by the module. Screenshots of every page (1280x800, and the jobs page 390 wide) go to
test-artifacts/ui/. Without /usr/bin/chromium the module is skipped, except under CI (env CI), where
that is a failure.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis as redis_lib
from gateway_support import copy_model, gateway_settings, truncate_all
from jobs_support import Stack, import_arc, make_key

from distillery.config import Settings
from distillery.distill.config import TrainConfig
from distillery.records import Example
from distillery.store import examples as ex_store
from distillery.store import jobs as job_store
from distillery.store import models as m
from distillery.store import runs as run_store
from distillery.store.db import session_scope
from distillery.teachers import registry

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts" / "ui"
WIDE = {"width": 1280, "height": 800}
NARROW = {"width": 390, "height": 844}
MODEL = "arc-student"

if not CHROMIUM.exists():
    reason = f"{CHROMIUM} is missing (apt-get install chromium); the dashboard's browser tests need it"
    if os.environ.get("CI"):
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason, allow_module_level=True)

from playwright.sync_api import Browser, Page, expect, sync_playwright  # noqa: E402


class UIStack(Stack):
    """The stack plus what the pages show: a teacher, two model versions, keys, a training run."""

    infer_key: str = ""
    versions: list[dict]


@pytest.fixture(scope="module")
def stack(
    database_url: str, redis_url: str, teacher_server: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[UIStack]:
    truncate_all(database_url)
    with redis_lib.Redis.from_url(redis_url) as client:
        client.flushdb()
    tmp = tmp_path_factory.mktemp("ui")
    base = Settings(home=tmp / "home", database_url=database_url, redis_url=redis_url)
    settings = gateway_settings(base, default_model="none", rate_limit_per_minute=100_000)
    import_arc(database_url, 8)
    with UIStack(settings, tmp) as s:
        s.register("smol", teacher_server, "smollm2-135m", "chat", timeout_s=300, max_concurrency=2)
        s.worker(concurrency=2)
        s.versions = []
        for name in ("v1", "v2"):
            response = s.http.post(
                "/v1/registry/models",
                json={"name": MODEL, "path": str(copy_model(tmp / name)), "metrics": {"acc": 0.25}},
            )
            assert response.status_code == 201, response.text
            s.versions.append(response.json())
        promoted = s.http.post(f"/v1/registry/models/{s.versions[0]['id']}/promote", params={"wait": "true"})
        assert promoted.status_code == 200, promoted.text
        s.infer_key = make_key(database_url, ("infer", "jobs:read", "train:read"), "reader")
        yield s


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    print(f"\ndashboard screenshots: {ARTIFACTS}")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def open_page(browser: Browser, viewport: dict | None = None) -> Page:
    context = browser.new_context(viewport=viewport or WIDE)
    context.set_default_timeout(30_000)
    return context.new_page()


def login(page: Page, stack: UIStack, key: str, path: str = "/ui/jobs") -> None:
    page.goto(stack.url + path)
    expect(page).to_have_url(re.compile(r"/ui/login"))
    page.get_by_label("API key").fill(key)
    page.get_by_role("button", name="Log in").click()
    expect(page).to_have_url(stack.url + path)


def shot(page: Page, name: str) -> None:
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    print(f"screenshot: {path}")


def notice(page: Page):
    return page.locator("#notice")


def test_without_a_session_every_page_goes_to_the_login_page(stack: UIStack, browser: Browser) -> None:
    page = open_page(browser)
    for path in ("/ui/jobs", "/ui/teachers", "/ui/training", "/ui/models", "/ui/playground"):
        page.goto(stack.url + path)
        expect(page).to_have_url(re.compile(r"/ui/login\?next="))
    page.get_by_label("API key").fill("dst_000000000000_wrong")
    page.get_by_role("button", name="Log in").click()
    expect(page.locator("#login-error")).to_contain_text("Invalid or revoked API key")
    shot(page, "login")
    page.context.close()


def test_a_job_submitted_from_the_page_reaches_100_percent_and_its_rationales_show(
    stack: UIStack, browser: Browser
) -> None:
    page = open_page(browser)
    login(page, stack, stack.key)
    page.get_by_label("Dataset").select_option("arc")
    page.get_by_label("Split").select_option("train")
    page.get_by_label("Limit (examples)").fill("3")
    page.get_by_label("smol").check()
    page.get_by_label("In-context strategy").select_option("none")
    page.get_by_label("Demonstrations (k)").fill("0")
    page.get_by_label("Max tokens").fill("24")
    page.get_by_role("button", name="Submit job").click()
    expect(notice(page)).to_contain_text("queued: 3 rationales")
    row = page.locator("tr[data-job]").first
    job_id = row.get_attribute("data-job")
    # The bar moves with the server-sent events, without a reload.
    expect(row.locator('[data-field="pct"]')).to_have_text("100 %", timeout=180_000)
    expect(row.locator('[data-field="status"]')).to_have_text("completed")
    expect(row.locator('[data-field="teachers"]')).to_contain_text("smol: 3 done, 0 failed")
    assert stack.job(job_id)["done"] == 3
    shot(page, "jobs")

    row.get_by_role("link", name="Rationales").click()
    expect(page).to_have_url(f"{stack.url}/ui/jobs/{job_id}/rationales")
    expect(page.locator("article.example")).to_have_count(3)
    first = page.locator("article.example").first
    example_id = first.get_attribute("data-example")
    first.get_by_role("link", name=example_id).click()
    expect(page.locator("article.example")).to_have_count(1)
    example = page.locator("article.example")
    expect(example.locator(".question")).not_to_be_empty()
    expect(example.locator(".options .gold")).to_contain_text("(gold)")
    expect(example.get_by_role("heading", name="smol")).to_be_visible()
    assert example.locator(".rationale .text").inner_text().strip()
    shot(page, "rationales")

    page.get_by_role("link", name="Teacher quality").click()
    teacher = page.locator('tr[data-teacher="smol"]')
    expect(teacher.locator("td").nth(1)).to_have_text("3")
    expect(teacher).to_contain_text("%")
    shot(page, "teachers")

    page.set_viewport_size(NARROW)
    page.goto(stack.url + "/ui/jobs")
    shot(page, "jobs-narrow")
    page.context.close()


def test_a_training_run_shows_its_live_loss_curve_and_evaluation(stack: UIStack, browser: Browser) -> None:
    url = stack.settings.database_url
    config = TrainConfig(student="smollm2-135m", dataset="arc", method="label_ft").model_dump(mode="json")
    with session_scope(url) as session:
        run, _ = run_store.create_run(session, config)
        run_id = run.id
        run_store.mark_running(session, run_id, str(stack.tmp / "ckpt"))
        points = [{"step": s, "loss": 3.0 / s, "loss_answer": 2.5 / s} for s in range(1, 6)]
        run_store.record_progress(session, run_id, 5, 10, points)
    page = open_page(browser)
    login(page, stack, stack.key, "/ui/training")
    page.get_by_role("link", name=run_id).click()
    expect(page.locator("#loss-chart polyline")).to_have_count(2)
    expect(page.locator('[data-field="points"]')).to_have_text("5")
    # The trainer logs on: the chart follows the server-sent events.
    with session_scope(url) as session:
        run_store.record_progress(session, run_id, 6, 10, [{"step": 6, "loss": 0.4, "loss_answer": 0.3}])
    expect(page.locator('[data-field="points"]')).to_have_text("6", timeout=20_000)
    expect(page.locator('[data-field="last-loss"]')).to_have_text("0.4000")
    with session_scope(url) as session:
        run_store.record_progress(session, run_id, 10, 10)
        run_store.finish_run(session, run_id, "completed", metrics={"eval": {"accuracy": 0.625, "n": 8}})
    expect(page.locator("#eval")).to_contain_text("62.50 %", timeout=20_000)
    expect(page.locator('#run [data-field="status"]')).to_have_text("completed")
    expect(page.locator("pre.config")).to_contain_text('"method": "label_ft"')
    shot(page, "training-run")
    page.get_by_role("link", name="All runs").click()
    expect(page.locator(f'tr[data-run="{run_id}"]')).to_contain_text("62.5 %")
    shot(page, "training")
    page.context.close()


def test_promoting_on_the_models_page_changes_the_served_model(stack: UIStack, browser: Browser) -> None:
    assert served(stack) == f"{MODEL}:v1"
    page = open_page(browser)
    login(page, stack, stack.key, "/ui/models")
    v2 = page.locator(f'tr[data-model="{stack.versions[1]["id"]}"]')
    v2.get_by_role("button", name="Promote").click()
    expect(notice(page)).to_contain_text(f"{MODEL}:v2 is in production", timeout=120_000)
    assert served(stack) == f"{MODEL}:v2"
    expect(v2).to_contain_text("serving")
    # The version served before is a rollback away.
    v1 = page.locator(f'tr[data-model="{stack.versions[0]["id"]}"]')
    expect(v1.get_by_role("button", name="Roll back to this")).to_be_visible()
    shot(page, "models")
    page.context.close()


def served(stack: UIStack) -> str:
    return stack.http.get("/v1/models").json()["data"][0]["id"]


def test_the_playground_answers_a_question(stack: UIStack, browser: Browser) -> None:
    page = open_page(browser)
    login(page, stack, stack.infer_key, "/ui/playground")
    page.get_by_label("Question").fill("Which gas do plants take in to make food?")
    page.get_by_label("Options, one per line").fill("oxygen\ncarbon dioxide\nnitrogen\nhelium")
    page.get_by_label("Also generate a rationale").check()
    page.get_by_label("Rationale length (tokens)").fill("8")
    page.get_by_role("button", name="Ask").click()
    answer = page.locator('#answer [data-field="answer"]')
    expect(answer).to_have_text(
        re.compile(r"^\([a-d]\) (oxygen|carbon dioxide|nitrogen|helium)$"), timeout=60_000
    )
    expect(page.locator('#answer [data-field="meta"]')).to_contain_text(MODEL)
    shot(page, "playground")
    page.context.close()


def test_an_infer_only_key_sees_the_403_of_cancel_and_promote(stack: UIStack, browser: Browser) -> None:
    url = stack.settings.database_url
    # A job no worker was told about stays queued, so it has a Cancel button.
    with session_scope(url) as session:
        dataset = ex_store.find_dataset(session, "arc")
        examples = [row_id for row_id, _ in ex_store.load_examples(session, "arc", "train")][:2]
        teacher = registry.get_teacher_by_name(session, "smol")
        job, _ = job_store.create_job(
            session,
            dataset_id=dataset.id,
            split="train",
            example_ids=examples,
            teacher_ids=[teacher.id],
            samples_per_example=1,
            params={"teachers": ["smol"]},
        )
        job_id = job.id
    page = open_page(browser)
    login(page, stack, stack.infer_key)
    page.locator(f'tr[data-job="{job_id}"]').get_by_role("button", name="Cancel").click()
    expect(notice(page)).to_have_text("403: this API key lacks the 'jobs:write' scope")
    assert stack.job(job_id)["status"] == "queued"
    shot(page, "jobs-403")
    page.get_by_role("link", name="Models").click()
    page.locator(f'tr[data-model="{stack.versions[0]["id"]}"]').get_by_role("button").click()
    expect(notice(page)).to_have_text("403: this API key lacks the 'admin' scope")
    shot(page, "models-403")
    page.get_by_role("button", name="Log out").click()
    expect(page).to_have_url(re.compile(r"/ui/login"))
    page.goto(stack.url + "/ui/jobs")
    expect(page).to_have_url(re.compile(r"/ui/login\?next="))
    page.context.close()

    admin = open_page(browser)
    login(admin, stack, stack.key)
    admin.locator(f'tr[data-job="{job_id}"]').get_by_role("button", name="Cancel").click()
    expect(notice(admin)).to_have_text(f"Job {job_id} cancelled.")
    assert stack.job(job_id)["status"] == "cancelled"
    admin.context.close()


XSS = '<img src=x onerror="window.__xss=1" data-xss="1"><script>window.__xss=1</script>'


def test_markup_in_stored_text_renders_as_text(stack: UIStack, browser: Browser) -> None:
    """Rationale text, teacher names and dataset names are shown escaped, never run as markup."""
    url = stack.settings.database_url
    with session_scope(url) as session:
        # Written straight to the database: whatever the API accepts, the pages must not trust it.
        ex_store.import_examples(
            session, f"ds{XSS}", "train", [Example("x1", f"Which? {XSS}", ("a", f"b {XSS}"), 1)]
        )
        dataset = ex_store.find_dataset(session, f"ds{XSS}")
        [(example_id, _)] = ex_store.load_examples(session, f"ds{XSS}", "train")
        teacher = m.Teacher(name=f"t{XSS}"[:100], backend="precomputed", prefix="explain: ")
        session.add(teacher)
        session.flush()
        job, _ = job_store.create_job(
            session,
            dataset_id=dataset.id,
            split="train",
            example_ids=[example_id],
            teacher_ids=[teacher.id],
            samples_per_example=1,
            params={"teachers": [teacher.name]},
        )
        session.add(m.Rationale(job_id=job.id, example_id=example_id, teacher_id=teacher.id, text=XSS))
        job_id = job.id
    page = open_page(browser)
    fired: list[str] = []
    page.on("dialog", lambda dialog: (fired.append(dialog.message), dialog.dismiss()))
    login(page, stack, stack.key)
    for path in ("/ui/jobs", f"/ui/jobs/{job_id}/rationales", "/ui/teachers"):
        page.goto(stack.url + path)
        page.wait_for_load_state("networkidle")
        expect(page.locator("body")).to_contain_text('<img src=x onerror="window.__xss=1"')
        assert page.locator("[data-xss]").count() == 0, path
        assert page.evaluate("() => window.__xss === undefined"), path
    shot(page, "escaped")
    assert not fired
    page.context.close()
