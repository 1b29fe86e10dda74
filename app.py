"""lrviz dashboard — router: page config, sidebar (model + data), navigation.

Run with ``streamlit run app.py``. The pages live in ``pages/`` and call :mod:`lrviz`; their shared
Streamlit helpers are ``pages/_sidebar.py`` (this router, the sidebar), ``pages/_state.py`` (caches,
the run's context, the current plan), ``pages/_measure.py`` (evaluations, projections, sensitivities)
and ``pages/_jobs.py`` (result store, background jobs).
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from pages import _sidebar as sidebar  # noqa: E402

page = sidebar.router()  # st.set_page_config + st.navigation(sidebar.pages()) + sidebar
page.run()
