"""The Train page's settings form: one widget per TrainConfig setting, with the section, label, help,
choices and bounds declared beside the setting in mtbert/config.py, and the form's values under a
preset. A new trainer setting appears in the form by itself."""
from __future__ import annotations

from dataclasses import dataclass, fields

from ..config import TASKS, Range, TrainConfig, allowed_values, kind, number_or_text, optional, preset_settings

DATA_SETTINGS = ("data_dir", "quora_train")  # set by the data picker, not the form
TASK_SETTINGS = ("tasks_file", "task_definitions")  # set by the tasks the page adds, not the form
NOT_IN_FORM = DATA_SETTINGS + TASK_SETTINGS


@dataclass
class Setting:
    name: str
    kind: str  # choice | tasks | bool | int | float | list | text
    default: object
    optional: bool = False  # None (an empty field) is allowed
    choices: tuple = ()
    section: str = ""
    label: str = ""
    description: str = ""
    range: Range | None = None
    allowed: str | None = None  # the allowed values as TrainConfig's message says them

    @property
    def help(self) -> str:
        """The widget's tooltip: what the setting does, its config key and the values allowed."""
        allowed = self.allowed if self.kind != "bool" else None  # a checkbox says it
        key = f"Config key: `{self.name}`" + (f" · Allowed: {allowed}" if allowed else "")
        return f"{self.description}\n\n{key}"

    def to_widget(self, value):
        """A config value as its form widget holds it (lists and empty text as strings)."""
        if self.kind == "list":
            return ", ".join(str(v) for v in value or [])
        if self.kind == "text" and value is None:
            return ""
        return value

    def from_widget(self, value):
        """The config value for what the form holds: empty optional text is None, a list is split
        on commas (numbers where they parse)."""
        if self.kind == "list":
            return [number_or_text(v.strip()) for v in str(value or "").split(",") if v.strip()]
        if self.kind == "text":
            value = str(value or "").strip()
            return None if self.optional and not value else value
        return value


def settings_spec() -> list[Setting]:
    """One entry per form setting, in form order: the sections in the order TrainConfig first
    declares them, the settings of a section in declaration order. The defaults are TrainConfig's
    as it resolves them (tasks: every built-in task)."""
    defaults = TrainConfig().to_dict()
    out = []
    for f in fields(TrainConfig):
        if f.name in NOT_IN_FORM:
            continue
        m = f.metadata
        choices = TASKS if f.name == "tasks" else m["choices"]
        k = "tasks" if f.name == "tasks" else "choice" if choices else "text" if kind(f) == "str" else kind(f)
        out.append(Setting(f.name, k, defaults[f.name], optional(f), tuple(choices), m["section"], m["label"],
                           m["help"], m["range"], allowed_values(f)))
    order = list(dict.fromkeys(s.section for s in out))
    return sorted(out, key=lambda s: order.index(s.section))  # stable: declaration order within a section


def preset_values(preset: str | None) -> dict:
    """Every form setting's value under a preset (None: the defaults)."""
    values = {s.name: s.default for s in settings_spec()}
    values.update({k: v for k, v in (preset_settings(preset) if preset else {}).items() if k not in NOT_IN_FORM})
    return values
