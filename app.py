"""Membership Leakage Explorer — the Streamlit entry point: `streamlit run app.py`."""

import streamlit as st

from dashboard import state

st.set_page_config(page_title="Membership Leakage Explorer", page_icon=":material/visibility:", layout="wide")

PAGES = [
    st.Page("app_pages/overview.py", title="Overview", icon=":material/home:", default=True),
    st.Page("app_pages/experiment.py", title="Experiment", icon=":material/science:"),
    st.Page("app_pages/audit.py", title="Audit your model", icon=":material/upload:"),
    st.Page("app_pages/distances.py", title="Distances", icon=":material/straighten:"),
    st.Page("app_pages/attacks.py", title="Attacks", icon=":material/target:"),
    st.Page("app_pages/defenses.py", title="Defenses", icon=":material/shield:"),
    st.Page("app_pages/playground.py", title="Playground", icon=":material/school:"),
    st.Page("app_pages/export.py", title="Export", icon=":material/download:"),
    st.Page("app_pages/jobs.py", title="Jobs", icon=":material/pending_actions:"),
]

try:
    state.housekeeping(str(state.store().root))  # once per server process: leftovers older than an hour
except ValueError as err:  # the store is misconfigured ($MIA_STORE names a file)
    state.show_error(err)
    st.stop()
with st.sidebar:
    state.job_panel()  # the background job this session follows, on every page
st.navigation(PAGES).run()
