"""cxrdemo: the Streamlit router. Run with `streamlit run app.py`."""

import streamlit as st

from cxrdemo.runs import examples
from app_pages import ui

st.set_page_config(page_title="cxrdemo — transfer learning on chest X-rays", page_icon=":material/radiology:", layout="wide")


def home() -> None:
    st.title("cxrdemo")
    st.markdown(
        """
See **transfer learning** on chest radiographs, step by step:

1. **Train** — pick a network (a small CNN or a well-known ImageNet architecture), decide how it starts
   (from scratch, from ImageNet, or from a model you trained before) and how much of it may change
   (*freeze level*). Training runs in the background; you can watch it learn or leave.
2. **Compare** — put runs side by side: learning curves, how many parameters were trained, seconds per
   epoch, and accuracy / recall / AUROC on held-out test images.
3. **Diagnose** — upload a PNG, JPEG or DICOM radiograph, see what a model predicts and, with a
   **Grad-CAM** heatmap, which regions drove that prediction.
4. **Lessons** — four guided experiments a teacher can run with one click: transfer with little data,
   which layers to freeze, shortcut learning (a burned-in marker) and leakage between patients.

Everything works out of the box on the built-in demo data (real paediatric chest X-rays, NORMAL vs
PNEUMONIA, Kermany et al. 2018, CC BY 4.0) and a small shipped demo model.
"""
    )
    shipped = examples.list_examples()
    if shipped:
        st.info(f"Nothing trained yet? The lessons are already finished once: {len(shipped)} example runs shipped "
                "with the project (read-only, marked *example*) fill the Lessons and Compare pages until you run "
                "your own.", icon=":material/menu_book:")
    c1, c2, c3, c4 = st.columns(4)
    c1.page_link(TRAINER, label="Start training", icon=":material/model_training:")
    c2.page_link(COMPARE, label="Compare runs", icon=":material/monitoring:")
    c3.page_link(DIAGNOSIS, label="Diagnose an image", icon=":material/radiology:")
    c4.page_link(LESSONS, label="Open the lessons", icon=":material/school:")


HOME = st.Page(home, title="Home", icon=":material/home:", default=True)
TRAINER = st.Page("app_pages/trainer.py", title="Trainer", icon=":material/model_training:", url_path="trainer")
COMPARE = st.Page("app_pages/compare.py", title="Compare", icon=":material/monitoring:", url_path="compare")
DIAGNOSIS = st.Page("app_pages/diagnosis.py", title="Diagnosis", icon=":material/radiology:", url_path="diagnosis")
LESSONS = st.Page("app_pages/lessons.py", title="Lessons", icon=":material/school:", url_path="lessons")

with st.sidebar:
    st.caption(ui.NOTICE)
ui.teacher_box()  # classroom mode: the teacher unlocks once, on any page, and stays unlocked until Lock
st.navigation([HOME, TRAINER, COMPARE, DIAGNOSIS, LESSONS]).run()
