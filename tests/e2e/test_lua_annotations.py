"""scripts/types/postern.lua, the rule API as Lua Language Server annotations,
names every function the C++ API registers — read from the registration
itself (filters/lua/*.cpp: each `{"name", c_function}` pair), so a function
added there without its annotation fails here.

Where a registration's table is known (set_functions(...) followed by
lua_setfield(L, -2, "dns") is postern.dns; the ctx method list; new_meta of
kHeadersMeta / kBodyMeta), the annotation must sit on that table; a
registration this test cannot place must still be annotated somewhere.
"""

import glob
import os
import re

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
ANNOTATIONS = os.path.join(ROOT, "scripts", "types", "postern.lua")
PAIR_RE = re.compile(r'\{"([a-z_][a-z0-9_]*)",\s*([a-z_][a-z0-9_]*)\}')
# the local each class is annotated on in postern.lua
TABLES = {"postern": "postern", "postern.dns": "Dns", "postern.store": "Store", "postern.util": "Util",
          "ctx": "Ctx", "headers": "Headers", "body": "Body"}


def registrations():
    """[(table or None, name, file)] of every Lua-callable C function registered by name."""
    c_functions = set()
    sources = sorted(glob.glob(os.path.join(ROOT, "filters", "lua", "*.cpp")))
    texts = {}
    for path in sources:
        with open(path) as f:
            texts[path] = f.read()
        c_functions.update(re.findall(r"\bint\s+([a-z_][a-z0-9_]*)\s*\(\s*lua_State\s*\*", texts[path]))
    found = []
    for path, text in texts.items():
        for m in PAIR_RE.finditer(text):
            if m.group(2) not in c_functions:
                continue       # not a C function pair (e.g. an enum table)
            found.append((place(text, m.start()), m.group(1), os.path.relpath(path, ROOT)))
    return found


def place(text, pos):
    """The Lua table a registration at `pos` lands in, or None."""
    call_start = max(text.rfind("set_functions(", 0, pos), text.rfind("new_meta(", 0, pos),
                     text.rfind("initializer_list", 0, pos))
    call = text[call_start:pos]
    if call.startswith("new_meta("):
        meta = re.match(r"new_meta\(L,\s*(k[A-Za-z]+)Meta", call)
        return {"kHeaders": "headers", "kBody": "body"}.get(meta.group(1)) if meta else None
    if "ctx_" in text[pos:pos + 40] and "install_ctx_types" in text[:pos]:
        return "ctx"
    if call.startswith("set_functions("):
        after = text[pos:]
        close = after.find("});")
        nxt = re.search(r'lua_newtable\(L\)|lua_setfield\(L,\s*-2,\s*"([a-z_]+)"\)', after[close:])
        if nxt and nxt.group(1):
            return f"postern.{nxt.group(1)}"
        return "postern"
    return None


def annotated():
    """{(local, name)} of `function Local.name(` / `function Local:name(` in the annotations."""
    with open(ANNOTATIONS) as f:
        text = f.read()
    return set(re.findall(r"^function\s+([A-Za-z_]+)[.:]([a-z_][a-z0-9_]*)\s*\(", text, re.M)), text


def test_registrations_are_found():
    regs = registrations()
    tables = {t for t, _, _ in regs}
    # the parse still sees the API's shape: if this fails, registration moved; adjust place()
    assert {"postern", "postern.dns", "postern.store", "postern.util", "ctx", "headers", "body"} <= tables, regs
    assert len(regs) >= 40, regs


def test_every_registered_function_is_annotated():
    functions, text = annotated()
    missing = []
    for table, name, path in registrations():
        if table in TABLES:
            if (TABLES[table], name) not in functions:
                missing.append(f"{table}.{name} ({path}): no `function {TABLES[table]}.{name}(` or `:{name}(`")
        elif not any(n == name for _, n in functions):
            missing.append(f"{name} ({path}): registered, annotated nowhere")
    assert not missing, f"{ANNOTATIONS} lacks:\n" + "\n".join(missing)


def test_annotated_functions_exist():
    """No annotation for a function postern does not register (a renamed one left behind)."""
    functions, _ = annotated()
    registered = {(TABLES.get(t), n) for t, n, _ in registrations()}
    stale = sorted(f"{t}.{n}" for t, n in functions if (t, n) not in registered)
    assert not stale, f"annotated but not registered: {stale}"


def test_annotations_are_lua_language_server_annotations():
    _, text = annotated()
    assert text.startswith("---@meta"), "LuaLS reads a definition file by its ---@meta line"
    for cls in ("postern", "postern.Ctx", "postern.Headers", "postern.Body", "postern.Client",
                "postern.Envelope", "postern.Address", "postern.Verdict", "postern.RuleSpec"):
        assert re.search(rf"^---@class {re.escape(cls)}\b", text, re.M), cls
    # every function has its parameters typed
    for m in re.finditer(r"^function\s+[A-Za-z_]+[.:][a-z_]+\(([^)]*)\)", text, re.M):
        for param in filter(None, (p.strip() for p in m.group(1).split(","))):
            doc = text[:m.start()].rsplit("\n\n", 1)[-1]
            assert re.search(rf"^---@param {param}\??\s", doc, re.M), f"{m.group(0)}: no ---@param {param}"
