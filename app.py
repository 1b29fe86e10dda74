"""lrviz dashboard — router: page config, sidebar (model + data), navigation.

Run with ``streamlit run app.py``. The pages live in ``pages/`` and call :mod:`lrviz` (logic in
``lrviz/dashboard.py``, ``lrviz/project.py``, ``lrviz/report.py``); the shared Streamlit glue (caches,
sidebar, the explicit page list, plan state) is ``pages/_common.py``.
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from pages import _common as common  # noqa: E402

page = common.router()  # st.set_page_config + st.navigation(common.pages()) + sidebar
page.run()
