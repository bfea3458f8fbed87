"""The OKR board in a real browser: Debian's Chromium driven by Playwright, on the whole system
as `make run` starts it (the launcher wires the board to the check-in service: its URL and
CORS). A scenario goes in over HTTP; then a person's view: sign in, see the tree, check in
through the form and watch the bar move without a reload, drag the time slider to see an old
target, open a key result's chart and audit trail, a team's meetings and a review, and read
the errors the services give next to the fields they are about.

Screenshots go to test-artifacts/board/. Without /usr/bin/chromium (`make chromium`) these
tests are skipped, unless CI is set: there they fail.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.async_api import Browser, Locator, Page, ViewportSize, async_playwright, expect

from shared.auth import mint_token
from tests.e2e.launcher import ROOT, System, launched
from tests.http.checkins_helpers import check_in_body, meeting_body
from tests.http.helpers import cycle_body, key_result_body, objective_body

pytestmark = pytest.mark.e2e

CHROMIUM = Path("/usr/bin/chromium")
CI = os.environ.get("CI", "") not in ("", "0", "false")
ARTIFACTS = ROOT / "test-artifacts" / "board"
# Never a browser download: Debian's build, headless, with nothing that calls home.
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
LAPTOP: ViewportSize = {"width": 1280, "height": 900}
PHONE: ViewportSize = {"width": 390, "height": 844}
THUMB_PX = 22  # the slider thumb's width in board.css (1.375rem)


def chromium() -> str:
    if not CHROMIUM.exists():
        if CI:
            pytest.fail("CI needs Debian's chromium for the board tests (make chromium)")
        pytest.skip("Debian's chromium is not installed (make chromium)")
    return str(CHROMIUM)


@dataclass
class Scenario:
    cycle: str
    company: str  # "Delight our customers" (platform): "Raise NPS", "Publish case studies"
    nps: str  # 20 → 50 points, checked in at 25 then 30, then its target raised to 80
    support: str  # objective "Faster support replies" (support), aligned under `company`
    replies: str  # 24 → 4 hours, checked in at 14 (50%)
    review: str  # platform's review: NPS scored 0.5 beside its suggestion
    checked_in_at: float  # the last check-in on NPS, before its target changed (epoch s)
    adjusted_at: float  # when NPS's target went from 50 to 80


@dataclass
class Access:
    """The launched system, and tokens of its secret."""

    system: System
    secret: str

    def token(self, sub: str = "admin", **claims: Any) -> str:
        claims.setdefault("roles", ["admin"])
        return mint_token(self.secret, sub, **claims)

    def client(self, service: str, token: str | None = None) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self.system.url(service),
            headers={"Authorization": f"Bearer {token or self.token()}"},
            timeout=20,
        )


@dataclass
class Board(Access):
    browser: Browser
    scenario: Scenario


async def _command(client: httpx.AsyncClient, method: str, path: str, body: Any = None) -> Any:
    r = await client.request(method, path, json=body)
    assert r.status_code in (200, 201), r.text
    return r.json()


async def _scenario(access: Access) -> Scenario:
    async with (
        access.client("goals") as goals,
        access.client("checkins") as checkins,
        access.client("reviews") as reviews,
        access.client("projections") as projections,
    ):
        cycle = (await _command(goals, "POST", "/v1/cycles", cycle_body(name="2027 Q1")))["id"]
        await _command(goals, "POST", f"/v1/cycles/{cycle}/start")
        company = (
            await _command(
                goals,
                "POST",
                "/v1/objectives",
                objective_body(cycle, title="Delight our customers", owner="alice"),
            )
        )["id"]
        nps = (
            await _command(
                goals,
                "POST",
                f"/v1/objectives/{company}/key-results",
                key_result_body(title="Raise NPS", start=20, target=50, owner="bob"),
            )
        )["id"]
        # Never checked in: overdue from the start.
        await _command(
            goals,
            "POST",
            f"/v1/objectives/{company}/key-results",
            key_result_body(title="Publish case studies", start=0, target=2, owner="erin"),
        )
        support = (
            await _command(
                goals,
                "POST",
                "/v1/objectives",
                objective_body(
                    cycle,
                    title="Faster support replies",
                    team="support",
                    owner="carol",
                    parent_id=company,
                ),
            )
        )["id"]
        answer = await _command(
            goals,
            "POST",
            f"/v1/objectives/{support}/key-results",
            key_result_body(title="Median reply time", unit="hours", start=24, target=4),
        )
        replies, planned = answer["id"], answer["position"]
        # The check-in service learns of key results from the goals events: wait for them.
        after = f"?min_position={planned}"
        for value, confidence in ((25, 5), (30, 7)):
            body = check_in_body(value=value, confidence=confidence, note=f"at {value}")
            await _command(checkins, "POST", f"/v1/key-results/{nps}/check-ins{after}", body)
        body = check_in_body(value=14, confidence=4, blockers=["Hiring"])
        last = await _command(checkins, "POST", f"/v1/key-results/{replies}/check-ins", body)
        held_on = (date.today() - timedelta(days=3)).isoformat()
        await _command(
            checkins,
            "POST",
            "/v1/teams/platform/check-in-meetings",
            meeting_body(cycle, held_on=held_on),
        )
        opened = await _command(
            reviews,
            "POST",
            f"/v1/reviews?min_position={planned}&min_position={last['position']}",
            {"cycle_id": cycle, "team": "platform"},
        )
        review = opened["id"]
        await _command(
            reviews,
            "PUT",
            f"/v1/reviews/{review}/scores/{nps}",
            {"score": 0.5, "comment": "The survey ran late"},
        )
        await _command(
            reviews,
            "POST",
            f"/v1/reviews/{review}/reflections",
            {"kind": "went_well", "text": "Pairing with support found the real issue"},
        )
        decided = await _command(
            reviews,
            "POST",
            f"/v1/reviews/{review}/carry-over",
            {"objective_id": company, "decision": "done"},
        )
        checked_in_at = time.time()
        await asyncio.sleep(3)  # a clear gap on the time slider between the two targets
        adjusted = await _command(
            goals,
            "POST",
            f"/v1/key-results/{nps}/target",
            {"target": 80, "reason": "Stretch: the new onboarding works"},
        )
        adjusted_at = time.time()
        # Everything is in the views before the first page loads.
        r = await projections.get(
            f"/v1/cycles/{cycle}/okrs",
            params={"min_position": [adjusted["position"], decided["position"]]},
        )
        assert r.status_code == 200, r.text
    return Scenario(cycle, company, nps, support, replies, review, checked_in_at, adjusted_at)


@pytest.fixture(scope="module")
async def board(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Board]:
    executable = chromium()  # skip before starting anything
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with launched(tmp_path_factory.mktemp("board")) as system:
        access = Access(system, (system.data_dir / "jwt-secret").read_text().strip())
        scenario = await _scenario(access)
        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(
                executable_path=executable, args=CHROMIUM_ARGS
            )
            try:
                yield Board(system, access.secret, browser, scenario)
            finally:
                await browser.close()


async def open_board(
    board: Board, *, viewport: ViewportSize = LAPTOP, token: str | None = None, at: str = ""
) -> Page:
    """A fresh browser context (its own sessionStorage) on the board, signed in."""
    context = await board.browser.new_context(viewport=viewport)
    page = await context.new_page()
    await page.goto(board.system.url("projections") + "/" + at)
    await page.get_by_label("Token").fill(token or board.token("alice", name="Alice"))
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.locator("#tree .objective").first).to_be_visible()
    return page


async def shot(page: Page, name: str) -> None:
    await page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def key_result(page: Page, key_result_id: str) -> Locator:
    return page.locator(f'#tree [data-key-result="{key_result_id}"]')


# --- the tree -----------------------------------------------------------------------------


async def test_the_board_shows_the_tree_with_aligned_children_under_their_parents(
    board: Board,
) -> None:
    s = board.scenario
    page = await open_board(board)
    await expect(page.locator("#cycle")).to_have_value(s.cycle)
    await expect(page.locator("#cycle option:checked")).to_have_text("2027 Q1 (active)")
    company = page.locator(f'#tree [data-objective="{s.company}"]')
    await expect(company.get_by_role("heading", name="Delight our customers")).to_be_visible()
    await expect(company.locator(".meta").first).to_contain_text("owner alice · team platform")
    # The support objective hangs under the company one.
    child = company.locator(f'ul.aligned > [data-objective="{s.support}"]')
    await expect(child.get_by_role("heading", name="Faster support replies")).to_be_visible()
    nps = key_result(page, s.nps)
    # 30 on the way from 20 to 80: 17%, confidence 7: on track (green).
    await expect(nps.get_by_role("progressbar")).to_have_attribute("aria-valuenow", "17")
    await expect(nps.locator(".bar")).to_have_class("bar on_track")
    await expect(nps.locator(".confidence")).to_have_text("confidence 7/10 · on track")
    await expect(nps.locator(".figures")).to_contain_text("owner bob")
    await expect(nps.locator(".target")).to_have_text("80 points")
    replies = key_result(page, s.replies)
    await expect(replies.locator(".bar")).to_have_class("bar at_risk")
    await expect(page.locator("#tree .teams")).to_contain_text("platform")
    await expect(page.get_by_role("link", name="platform: review, open")).to_be_visible()
    overdue = page.locator("#tree .overdue li")
    await expect(overdue).to_have_count(1)
    await expect(overdue).to_contain_text("Publish case studies · owner erin")
    await expect(overdue).to_contain_text("last check-in never")
    await expect(page.locator("#live")).to_have_text("live")
    await shot(page, "tree")
    await page.context.close()


async def test_the_board_is_readable_on_a_phone(board: Board) -> None:
    page = await open_board(board, viewport=PHONE)
    await expect(key_result(page, board.scenario.nps)).to_be_visible()
    overflow = await page.evaluate(
        "document.documentElement.scrollWidth - document.documentElement.clientWidth"
    )
    assert overflow <= 0, f"the page is {overflow}px wider than a phone"
    await shot(page, "tree-phone")
    await page.context.close()


async def test_the_token_stays_in_the_tab_and_out_of_every_url(board: Board) -> None:
    context = await board.browser.new_context(viewport=LAPTOP)
    page = await context.new_page()
    urls: list[str] = []
    page.on("request", lambda request: urls.append(request.url))
    await page.goto(board.system.url("projections") + "/")
    await page.get_by_label("Token").fill("not-a-token")
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.locator("#token-error")).to_contain_text("token")
    await expect(page.get_by_label("Token")).to_have_attribute("aria-invalid", "true")
    token = board.token("alice")
    await page.get_by_label("Token").fill(token)
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.locator("#live")).to_have_text("live")
    stored = await page.evaluate("[sessionStorage.length, localStorage.length, document.cookie]")
    assert stored == [1, 0, ""]
    assert urls and not [u for u in urls if token in u]
    await page.get_by_role("button", name="Sign out").click()
    await expect(page.get_by_label("Token")).to_be_visible()
    assert await page.evaluate("sessionStorage.length") == 0
    await expect(page.locator("#tree .objective")).to_have_count(0)  # nothing read is left
    await context.close()


async def test_every_control_has_a_label_and_focus_is_visible(board: Board) -> None:
    s = board.scenario
    page = await open_board(board, at=f"#/cycles/{s.cycle}/key-results/{s.nps}")
    await expect(page.get_by_label("Value now")).to_be_visible()
    unlabelled = await page.evaluate(
        """[...document.querySelectorAll('input, select, textarea')]
             .filter((c) => c.type !== 'hidden' && c.labels.length === 0)
             .map((c) => c.outerHTML)"""
    )
    assert unlabelled == []
    await page.get_by_label("Cycle", exact=True).focus()
    await page.keyboard.press("Tab")
    outline = await page.evaluate(
        "[document.activeElement.id, getComputedStyle(document.activeElement).outlineStyle]"
    )
    assert outline == ["as-of", "solid"]
    await page.context.close()


# --- live updates -------------------------------------------------------------------------


async def test_a_check_in_through_the_form_moves_the_bar_without_a_reload(board: Board) -> None:
    s = board.scenario
    page = await open_board(board, at=f"#/cycles/{s.cycle}/key-results/{s.replies}")
    bar = key_result(page, s.replies).get_by_role("progressbar")
    await expect(bar).to_have_attribute("aria-valuenow", "50")  # 14 hours: half way
    await page.evaluate("window.loadedOnce = true")  # gone if the page reloads

    form = page.get_by_role("form", name="Check in on this key result")
    await form.get_by_label("Value now").fill("9")
    await form.get_by_label("Confidence (0 to 10)").fill("8")
    await form.get_by_label("Note").fill("The new macros help")
    await form.get_by_role("button", name="Check in").click()
    await expect(form.locator(".form-status")).to_have_text("Checked in.")
    await expect(bar).to_have_attribute("aria-valuenow", "75")  # 24 → 9 of 24 → 4
    await expect(key_result(page, s.replies).locator(".bar")).to_have_class("bar on_track")
    await shot(page, "check-in-form")

    # A check-in made elsewhere arrives by the event stream.
    async with board.client("checkins") as checkins:
        body = check_in_body(value=6, confidence=9)
        await _command(checkins, "POST", f"/v1/key-results/{s.replies}/check-ins", body)
    await expect(bar).to_have_attribute("aria-valuenow", "90")
    await expect(page.locator(".check-ins > li")).to_have_count(3)
    assert await page.evaluate("window.loadedOnce") is True
    await page.context.close()


# --- the past -----------------------------------------------------------------------------


async def test_the_time_slider_shows_the_tree_as_it_was(board: Board) -> None:
    s = board.scenario
    page = await open_board(board)
    nps = key_result(page, s.nps)
    await expect(nps.locator(".target")).to_have_text("80 points")

    # Drag the thumb (at "now", the right end) to between the last check-in and the change.
    async with board.client("projections") as projections:
        cycles = (await projections.get("/v1/cycles")).json()["items"]
    recorded = next(c for c in cycles if c["id"] == s.cycle)["recorded_at"]
    start = datetime.fromisoformat(recorded.replace("Z", "+00:00")).timestamp()
    wanted = (s.checked_in_at + s.adjusted_at) / 2
    fraction = (wanted - start) / (time.time() - start)
    box = await page.locator("#as-of").bounding_box()
    assert box is not None
    y = box["y"] + box["height"] / 2
    track = box["width"] - THUMB_PX
    await page.mouse.move(box["x"] + THUMB_PX / 2 + track, y)
    await page.mouse.down()
    await page.mouse.move(box["x"] + THUMB_PX / 2 + fraction * track, y, steps=12)
    await page.mouse.up()
    shown = await page.locator("#as-of").get_attribute("aria-valuetext")
    await expect(page.locator(".as-of-note")).to_contain_text("As it was on")
    await expect(nps.locator(".target"), f"the slider shows {shown}").to_have_text("50 points")
    await expect(page.get_by_role("button", name="Back to now")).to_be_enabled()
    await shot(page, "time-slider")

    # The keyboard moves it too: End is now, Home the moment the cycle was recorded.
    await page.locator("#as-of").focus()
    await page.keyboard.press("End")
    await expect(nps.locator(".target")).to_have_text("80 points")
    await expect(page.locator(".as-of-note")).to_have_count(0)
    await expect(page.locator("#as-of-shown")).to_have_text("now")
    await page.keyboard.press("Home")
    await expect(page.locator("#tree")).to_contain_text("No objectives in this cycle yet.")
    await page.context.close()


# --- a key result, a team, a review -------------------------------------------------------


async def test_a_key_result_page_shows_its_chart_and_audit_timeline(board: Board) -> None:
    s = board.scenario
    page = await open_board(board)
    await key_result(page, s.nps).get_by_role("link", name="Raise NPS").click()
    detail = page.locator("#detail")
    await expect(detail.get_by_role("heading", name="Raise NPS", level=2)).to_be_focused()
    chart = detail.get_by_role("img", name="Check-ins of Raise NPS")
    await expect(chart).to_have_attribute("data-points", "2")
    await expect(chart.locator("circle.value-point")).to_have_count(2)
    await expect(chart.locator("rect.confidence-point")).to_have_count(2)
    await expect(chart.locator(".target-line")).to_have_count(1)
    await expect(detail.locator(".check-ins")).to_contain_text("at 25")
    timeline = detail.locator("ol.audit")
    adjusted = timeline.locator("li", has_text="target adjusted")
    await expect(adjusted).to_contain_text("target: 50 → 80")
    await expect(adjusted).to_contain_text("Why: Stretch: the new onboarding works")
    await expect(timeline.locator("> li", has_text="checked in")).to_have_count(2)
    await expect(timeline.locator("> li", has_text="defined")).to_have_count(1)
    await shot(page, "key-result")
    await page.context.close()


async def test_a_team_page_shows_its_meetings_wins_first_and_records_one(board: Board) -> None:
    page = await open_board(board)
    await page.get_by_role("link", name="platform: meetings").click()
    detail = page.locator("#detail")
    meeting = detail.locator("article.meeting").first
    await expect(meeting.locator("section").first).to_have_class("list wins")
    await expect(meeting.locator(".wins")).to_contain_text("pairing with support")
    await expect(meeting.locator(".learnings")).to_contain_text("Smaller PRs merge faster")
    await expect(meeting.locator(".priorities")).to_contain_text("Finish the export")
    await expect(detail.locator(".team-overdue li")).to_contain_text("Publish case studies")

    form = page.get_by_role("form", name="Record a check-in meeting of team platform")
    await form.get_by_label("Wins").fill("Shipped the survey\nClosed 40 tickets")
    await form.get_by_label("Learnings").fill("Ask early")
    await form.get_by_role("button", name="Record the meeting").click()
    await expect(form.locator(".form-status")).to_have_text("Meeting recorded.")
    await expect(detail.locator("article.meeting")).to_have_count(2)
    await expect(detail.locator("article.meeting").first.locator(".wins li")).to_have_text(
        ["Shipped the survey", "Closed 40 tickets"]
    )
    await shot(page, "team")
    await page.context.close()


async def test_the_review_page_shows_scores_beside_suggestions(board: Board) -> None:
    s = board.scenario
    page = await open_board(board)
    review = page.get_by_role("link", name="platform: review, open")
    await expect(review).to_have_attribute("href", f"#/cycles/{s.cycle}/reviews/{s.review}")
    await review.click()
    detail = page.locator("#detail")
    await expect(detail.get_by_role("heading", name="Review of team platform")).to_be_visible()
    row = detail.locator(f'tr[data-key-result="{s.nps}"]')
    await expect(row.locator(".suggested")).to_have_text("0.3")  # 30 of 20 → 50 when opened
    await expect(row.locator(".score")).to_have_text("0.5")
    await expect(row).to_contain_text("The survey ran late")
    await expect(detail.locator(".went_well")).to_contain_text("Pairing with support")
    await expect(detail.locator(f'.decisions [data-objective="{s.company}"]')).to_contain_text(
        "done"
    )
    await shot(page, "review")
    await page.context.close()


# --- errors -------------------------------------------------------------------------------


async def test_form_errors_are_shown_next_to_their_fields(board: Board) -> None:
    s = board.scenario
    page = await open_board(board, at=f"#/cycles/{s.cycle}/key-results/{s.nps}")
    form = page.get_by_role("form", name="Check in on this key result")
    await form.get_by_label("Value now").fill("31")
    await form.get_by_label("Confidence (0 to 10)").fill("11")
    # The second line of blockers is too long: the error names `blockers.1`.
    await form.get_by_label("Blockers").fill("Hiring\n" + "x" * 1001)
    await form.get_by_role("button", name="Check in").click()
    confidence = form.get_by_label("Confidence (0 to 10)")
    await expect(confidence).to_have_attribute("aria-invalid", "true")
    await expect(confidence).to_be_focused()
    await expect(form.locator("#checkin-confidence-error")).to_contain_text("10")
    await expect(form.get_by_label("Blockers")).to_have_attribute("aria-invalid", "true")
    await expect(form.locator("#checkin-blockers-error")).to_contain_text("1000 characters")
    await expect(form.locator("#checkin-value-error")).to_be_empty()
    await expect(form.get_by_label("Value now")).not_to_have_attribute("aria-invalid", "true")
    await shot(page, "form-error")

    await page.goto(f"{board.system.url('projections')}/#/cycles/{s.cycle}/teams/platform")
    meeting = page.get_by_role("form", name="Record a check-in meeting of team platform")
    await meeting.get_by_label("Held on").fill("2099-01-01")
    await meeting.get_by_role("button", name="Record the meeting").click()
    await expect(meeting.locator("#meeting-held-on-error")).to_contain_text(
        "must not be in the future"
    )
    await page.context.close()


async def test_a_refused_command_names_the_missing_permission(board: Board) -> None:
    s = board.scenario
    viewer = board.token("victor", roles=["viewer"], teams=["platform"])
    page = await open_board(board, token=viewer, at=f"#/cycles/{s.cycle}/key-results/{s.nps}")
    form = page.get_by_role("form", name="Check in on this key result")
    await form.get_by_label("Value now").fill("31")
    await form.get_by_label("Confidence (0 to 10)").fill("7")
    await form.get_by_role("button", name="Check in").click()
    await expect(form.get_by_role("alert")).to_contain_text("check-ins:write")
    await expect(form.locator("[aria-invalid]")).to_have_count(0)
    await page.context.close()
