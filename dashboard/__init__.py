"""The NeuroStack Streamlit dashboard's support code.

``paths``, ``evaluation``, ``charts`` and ``tables`` are plain Python (no Streamlit)
so they can be tested directly; ``cache`` holds every Streamlit-cached loader and
``components`` the small render helpers shared by the pages.
"""
