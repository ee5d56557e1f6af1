"""nbgrader settings for the course: `solutions/` is the source, `notebooks/` the student release.

Run nbgrader from the repository root, e.g. `nbgrader generate_assignment 01_setup --force`.
Each lesson is its own assignment so an instructor can release them one by one.
"""
c = get_config()  # noqa: F821  (provided by nbgrader)

c.CourseDirectory.source_directory = "solutions"
c.CourseDirectory.release_directory = "notebooks"
c.ClearSolutions.code_stub = {"python": "# YOUR CODE HERE\nraise NotImplementedError()"}
c.ClearSolutions.text_stub = "YOUR ANSWER HERE"
# The first cell imports fastai (~10 s) and may load the cached model: the default 30 s is tight.
c.Execute.timeout = 180
# A student who deletes a graded cell gets it back (and loses its points) instead of crashing grading.
c.OverwriteCells.add_missing_cells = True
