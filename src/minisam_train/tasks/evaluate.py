"""minisam-train eval (work in progress)."""


def run(cfg):
    raise NotImplementedError("minisam-train eval is not implemented yet")
