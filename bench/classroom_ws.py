"""A classroom without browsers: N Streamlit sessions as websocket clients press "Run the demo" together.

    .venv/bin/python -m bench.classroom_ws [--sessions 30]

Each client speaks Streamlit's own protocol (the BackMsg / ForwardMsg protobufs a browser tab sends and reads on
/_stcore/stream), so the server does all the work it does for a real tab (one session and one script run per
request, every element serialised) while the clients cost next to nothing; on this 2-core machine 30 Chromium
renderers would otherwise take most of the CPU (bench/classroom.py). A client opens the Overview page, presses
*Run the demo*, reruns the sidebar's job panel every two seconds as a tab does (the fragment the server asks to
poll; the panel reruns the whole page when the first results and the finished run arrive), notes when the first
results and then the finished run's headline are shown, and opens the Attacks page, which must show no exception.

First one session alone on a fresh store, then N sessions pressing within a second of each other on another
fresh store. Prints a table: seconds from the click to the first results, to the finished headline and to the
Attacks page (median and slowest), jobs the server computed, requests that attached to a job, errors.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from streamlit.proto.BackMsg_pb2 import BackMsg
from streamlit.proto.ForwardMsg_pb2 import ForwardMsg
from websockets.asyncio.client import connect

from bench.classroom import serve
from mia_core.jobs import JobQueue

DONE = (ForwardMsg.FINISHED_SUCCESSFULLY, ForwardMsg.FINISHED_WITH_COMPILE_ERROR,
        ForwardMsg.FINISHED_FRAGMENT_RUN_SUCCESSFULLY)


@dataclass
class Page:
    """What one script run showed: texts (markdown, alerts, headings, metric labels), buttons, exceptions."""

    texts: list[str] = field(default_factory=list)
    buttons: list[str] = field(default_factory=list)
    exceptions: list[str] = field(default_factory=list)

    def shows(self, words: str) -> bool:
        return any(words in t.replace("\\", "") for t in self.texts)


class Session:
    """One browser tab's worth of Streamlit session, driven over its websocket."""

    def __init__(self, ws):
        self.ws, self.query, self.pages, self.page = ws, "", {}, ""
        self.polling: set[str] = set()  # fragments the server asked to rerun every few seconds (the job panel)

    async def run(self, page: str | None = None, widgets: tuple[str, ...] = (), fragment: str = "") -> Page:
        """One script run, as a tab asks for it: a page (the current one by default), with buttons pressed, or
        one fragment's rerun; returns what the run drew (a fragment that reruns the app: the whole app's run)."""
        msg = BackMsg()
        state = msg.rerun_script
        self.page = self.pages.get(page, self.page) if page is not None else self.page
        state.query_string, state.page_script_hash = self.query, self.page
        if fragment:
            state.fragment_id, state.is_auto_rerun = fragment, True
        for wid in widgets:
            w = state.widget_states.widgets.add()
            w.id, w.trigger_value = wid, True
        await self.ws.send(msg.SerializeToString())
        shown = Page()
        while True:
            fm = ForwardMsg()
            fm.ParseFromString(await self.ws.recv())
            kind = fm.WhichOneof("type")
            if kind == "navigation":
                self.pages = {p.page_name: p.page_script_hash for p in fm.navigation.app_pages}
            elif kind == "page_info_changed":
                self.query = fm.page_info_changed.query_string
            elif kind == "new_session":
                self.page = self.page or fm.new_session.page_script_hash
            elif kind == "auto_rerun":
                self.polling.add(fm.auto_rerun.fragment_id)
            elif kind == "stop_auto_rerun":
                self.polling -= set(fm.stop_auto_rerun.fragment_ids)
            elif kind == "delta" and fm.delta.WhichOneof("type") == "new_element":
                el = fm.delta.new_element
                what = el.WhichOneof("type")
                if what == "button":
                    shown.buttons.append(el.button.id)
                elif what in ("markdown", "alert", "heading"):
                    shown.texts.append(getattr(el, what).body)
                elif what == "metric":
                    shown.texts.append(el.metric.label)
                elif what == "exception":
                    shown.exceptions.append(el.exception.message)
            elif kind == "script_finished" and fm.script_finished in DONE:
                return shown


@dataclass
class Outcome:
    first: float | None = None  # click -> first results shown
    headline: float | None = None  # click -> the finished run's headline
    attacks: float | None = None  # click -> Attacks page drawn
    polls: int = 0  # reruns of the job panel alone
    errors: list[str] = field(default_factory=list)


async def student(url: str, delay: float, timeout: float) -> Outcome:
    out = Outcome()
    await asyncio.sleep(delay)
    try:
        async with connect(url.replace("http", "ws") + "/_stcore/stream", subprotocols=["streamlit"],
                           max_size=None, open_timeout=60, ping_interval=None) as ws:
            s = Session(ws)
            page = await s.run()
            demo = [b for b in page.buttons if b.endswith("-demo")]
            if not demo:
                raise RuntimeError("no 'Run the demo' button on the first page")
            t0 = time.perf_counter()
            page = await s.run("Overview", (demo[0],))
            while time.perf_counter() - t0 < timeout:
                out.errors += page.exceptions
                if page.shows("Headline"):
                    if page.shows("Still being computed"):
                        out.first = out.first or time.perf_counter() - t0
                    else:
                        out.headline = time.perf_counter() - t0
                        out.first = out.first or out.headline
                        break
                await asyncio.sleep(2.0)  # the sidebar's job panel polls every two seconds
                out.polls += bool(s.polling)
                page = await s.run(fragment=next(iter(s.polling))) if s.polling else await s.run()
            else:
                raise TimeoutError(f"no headline within {timeout:.0f} s")
            page = await s.run("Attacks")
            out.errors += page.exceptions
            if not page.shows("Attacks"):
                out.errors.append("the Attacks page did not draw")
            out.attacks = time.perf_counter() - t0
    except Exception as err:  # counted and shown, never hidden
        out.errors.append(f"{type(err).__name__}: {err}")
    return out


def classroom(sessions: int, timeout: float) -> tuple[list[Outcome], int, int]:
    store = Path(tempfile.mkdtemp(prefix="bench-classroom-ws-"))
    proc, url = serve(store)
    try:
        rng = random.Random(0)

        async def all_of_them():
            return await asyncio.gather(*(student(url, rng.uniform(0, 1) if sessions > 1 else 0.0, timeout)
                                          for _ in range(sessions)))

        outcomes = asyncio.run(all_of_them())
        jobs = JobQueue(store).jobs()
        return outcomes, len(jobs), sum(j.attached for j in jobs)
    finally:
        proc.terminate()
        proc.wait(30)


def _row(label: str, outcomes: list[Outcome], jobs: int, attached: int) -> str:
    def stat(values):
        v = [x for x in values if x is not None]
        return f"{statistics.median(v):.1f} / {max(v):.1f}" if v else "-"

    errors = sum(len(o.errors) for o in outcomes)
    return (f"| {label} | {stat(o.first for o in outcomes)} | {stat(o.headline for o in outcomes)} | "
            f"{stat(o.attacks for o in outcomes)} | {jobs} | {attached} | {errors} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sessions", type=int, default=30)
    p.add_argument("--timeout", type=float, default=900.0)
    a = p.parse_args()
    print("| sessions | first results (s, median / slowest) | finished headline | Attacks page | jobs | attached "
          "| errors |")
    print("|---|---|---|---|---|---|---|")
    for n in (1, a.sessions):
        outcomes, jobs, attached = classroom(n, a.timeout)
        print(_row(str(n), outcomes, jobs, attached), flush=True)
        print(f"  (job-panel fragment reruns: {sum(o.polls for o in outcomes)})", flush=True)
        for o in outcomes:
            for e in o.errors:
                print(f"  error: {e}")


if __name__ == "__main__":
    main()
