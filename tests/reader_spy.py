"""What the reader tests share: a spy on a reader class's ``roi_inside_outside`` that records how
many RoIs each call assembled (none when a native read-out served the call)."""


def spy_inside_outside(monkeypatch, cls):
    """Patch ``cls.roi_inside_outside`` to record each call's RoI count; returns the list."""
    sizes = []
    original = cls.roi_inside_outside

    def spy(self, maps, rois):
        sizes.append(len(rois))
        return original(self, maps, rois)

    monkeypatch.setattr(cls, "roi_inside_outside", spy)
    return sizes
