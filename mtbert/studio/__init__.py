"""What only the studio needs (the Streamlit pages, home.py, app.py, gradio_app.py): starting and
watching runs, the settings form, the checkpoints on offer, the machine, charts, the playground.

No Streamlit or Gradio in here either: the pages lay things out and call these. The engine (the
rest of mtbert) never imports this package (tests/test_boundary.py checks it): the trainer and the
CLI work without it, and they meet the studio only in a run folder (mtbert.runfolder).
"""
