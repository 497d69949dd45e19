import streamlit as st

from dashboard import state
from mia_core import views
from mia_core.limits import Limits

st.title("Jobs")
st.caption("Everything computed in the background on this server, for every visitor: queued, running, finished, "
           "failed. Identical requests share one job. Leaving or reloading a page never stops a job; Cancel does, "
           "and leaves the store as it was.")


@st.fragment(run_every=2.0)
def job_list() -> None:
    queue = state.job_queue(str(state.store().root))
    jobs = queue.jobs()
    limits = Limits.from_env()
    st.caption(f"At most {limits.max_jobs} running at once (MIA_MAX_JOBS).")
    if not jobs:
        st.write("No jobs yet.")
        return
    st.dataframe(views.jobs_frame(jobs), hide_index=True, width="stretch", key="jobs_table")
    active = [j for j in jobs if j.status.active]
    done = [j for j in jobs if j.run_id]
    a, b = st.columns(2)
    if active:
        pick = a.selectbox("active job", [j.id for j in active], key="jobs_active_pick",
                           format_func=lambda i: next(f"{j.label} ({j.status.value})" for j in active if j.id == i))
        follow, cancel = a.columns(2)
        follow.button("Follow", key="jobs_follow", on_click=state.follow_job, args=(pick,),  # counts if it ends first
                      help="Show its progress in the sidebar and its first results on every page while it runs; "
                      "its run opens when it is done.")
        if cancel.button("Cancel", key="jobs_cancel"):
            queue.cancel(pick)
            st.rerun()
    if done:
        pick = b.selectbox("finished job to open", [j.id for j in done], key="jobs_open_pick",
                           format_func=lambda i: next(j.label for j in done if j.id == i))
        if b.button("Open", key="jobs_open"):
            state.set_current(next(j.run_id for j in done if j.id == pick))
            st.rerun(scope="app")


job_list()
