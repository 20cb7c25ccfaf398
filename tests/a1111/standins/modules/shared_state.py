"""Stand-in for modules/shared_state.py (v1.10.1): the job state that /sdapi/v1/progress reports and that
/sdapi/v1/interrupt and /skip set. ``begin()`` clears interrupted and skipped."""


class State:
    skipped = False
    interrupted = False
    job = ""
    job_no = 0
    job_count = 0
    sampling_step = 0
    sampling_steps = 0
    textinfo = None

    def interrupt(self):
        self.interrupted = True

    def skip(self):
        self.skipped = True

    def begin(self, job="(unknown)"):
        self.sampling_step = 0
        self.job_count = -1
        self.job_no = 0
        self.skipped = False
        self.interrupted = False
        self.textinfo = None
        self.job = job

    def end(self):
        self.job = ""
        self.job_count = 0
