"""What a person sees of the node pack on ComfyUI's own page, checked in a real browser.

Used by ``comfyui_driver.py --browser /usr/bin/chromium`` while its ComfyUI runs. Chromium is driven by
playwright (from PyPI, in the Python that runs the driver) through ``executable_path``: playwright's own
browser download is never used. The checks, each with a screenshot in the screenshots folder:

- the template browser shows a card per workflow, titled with the workflow's readable name, with its
  thumbnail loaded;
- each card opens its workflow: no missing-nodes dialog, every node type known to the page, every FlowSR
  widget present with the value saved in the file and accepted by the node (as ``/object_info`` describes it),
  and no node of plain widgets taller than its widgets need (a blank band under them);
- one workflow with the built-in model runs from the page: an image uploaded through Load Image's button,
  Run pressed, and the upscaled image shown in the Save Image node.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Optional

import comfyui_workflows as checker

#: Chromium's own background connections are refused on a closed network; these keep it from trying.
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run"]
VIEWPORT = {"width": 1600, "height": 1000}
#: A node may be this many pixels taller than its widgets need before the spare room shows as a band.
BAND_TOLERANCE = 8
#: How long ComfyUI may take to open its template browser by itself after the page loads (first start only).
FIRST_START_DIALOG_MS = 10000
#: Widget kinds that fill the room a node has (text areas, image previews): such nodes may be any height.
FILLING_WIDGETS = {"customtext", "custom", "markdown"}

#: Everything the checks read from the page about the loaded graph, in one call.
GRAPH_STATE = """() => app.graph._nodes.map(node => ({
    id: node.id, type: node.type, size: [...node.size], needed: [...node.computeSize()],
    known: !!LiteGraph.registered_node_types[node.type], has_errors: !!node.has_errors,
    widgets: (node.widgets || []).map(widget => ({name: widget.name, type: widget.type, value: widget.value}))}))"""

#: Where the page drew a node's widget, in page coordinates (the canvas is not DOM: no element to click);
#: null until the canvas has drawn it.
WIDGET_POINT = """([nodeId, widgetName]) => {
    const node = app.graph.getNodeById(nodeId);
    const widget = node.widgets.find(w => w.name === widgetName);
    if (widget.last_y === undefined) return null;
    const graphPoint = [node.pos[0] + node.size[0] / 2, node.pos[1] + widget.last_y + 10];
    const [x, y] = app.canvas.ds.convertOffsetToCanvas(graphPoint);
    const box = app.canvas.canvas.getBoundingClientRect();
    return [box.left + x, box.top + y];
}"""

#: The first image a node shows, once loaded: [src, width, height].
SHOWN_IMAGE = """(nodeId) => {
    const images = app.graph.getNodeById(nodeId).imgs || [];
    const image = images[0];
    return image && image.complete && image.naturalWidth ? [image.src, image.naturalWidth, image.naturalHeight] : null;
}"""


class ComfyPage:
    """ComfyUI's page in headless Chromium, with the few moves a person makes on it."""

    def __init__(self, page, url: str, screenshots: Path):
        from playwright.sync_api import TimeoutError as PlaywrightTimeout

        self.page, self.url, self.screenshots = page, url, screenshots
        self.timeout_error = PlaywrightTimeout
        self.shots: list[str] = []

    def open(self, timeout: float) -> None:
        self.page.goto(self.url)
        self.page.wait_for_function("() => window.app && app.graph && app.canvas && LiteGraph",
                                    timeout=timeout * 1000)

    def screenshot(self, name: str) -> None:
        path = self.screenshots / f"{len(self.shots) + 1:02d}_{name}.png"
        self.page.screenshot(path=str(path))
        self.shots.append(str(path))

    def open_pack_templates(self, pack: str) -> Any:
        """The template browser on the pack's category (on a first start ComfyUI opens the browser itself)."""
        category = self.page.get_by_role("option", name=pack, exact=True)
        try:
            category.wait_for(timeout=FIRST_START_DIALOG_MS)
        except self.timeout_error:
            self.page.locator(".side-bar-button").filter(has_text="Templates").first.click()
        category.click()
        cards = self.page.locator("[data-testid^='template-workflow-']")
        cards.first.wait_for()
        return cards

    def show_pack_cards(self, pack: str, names: list[str]) -> Any:
        """The pack's cards on screen. On a first start the page can re-render the dialog on "All Templates" just
        after the category was clicked (seen in CI: the cards read were ComfyUI's own), so it is clicked again."""
        for _ in range(2):
            cards = self.open_pack_templates(pack)
            try:
                for name in names:
                    self.page.locator(f"[data-testid='template-workflow-{name}']").wait_for(timeout=15000)
                return cards
            except self.timeout_error:
                continue
        return cards  # still not shown: the checks report the cards as missing

    def template_cards(self, pack: str, names: list[str]) -> list[dict]:
        """Each card's name, title, description and its images' widths, once the thumbnails have loaded. An
        image whose source the page has not set yet also counts as complete, so the wait is for a width."""
        cards = self.show_pack_cards(pack, names)
        try:
            self.page.wait_for_function(
                "() => [...document.querySelectorAll(\"[data-testid^='template-workflow-'] img\")]"
                ".every(image => image.complete && image.naturalWidth > 0)", timeout=30000)
        except self.timeout_error:  # reported as a card without its thumbnail
            pass
        return cards.evaluate_all("""cards => cards.map(card => ({
            name: card.dataset.testid.replace('template-workflow-', ''),
            title: card.querySelector('h3')?.innerText.trim(), description: card.querySelector('p')?.innerText.trim(),
            thumbnail: [...card.querySelectorAll('img')].map(image => image.naturalWidth)}))""")

    def open_template(self, pack: str, name: str, node_count: int) -> None:
        self.open_pack_templates(pack)
        self.page.locator(f"[data-testid='template-workflow-{name}']").click()
        self.page.wait_for_function("count => app.graph._nodes.length === count", arg=node_count, timeout=30000)
        time.sleep(1)  # the missing-nodes dialog, when there is one, opens right after the graph loads

    def missing_nodes_dialog(self) -> bool:
        return self.page.locator(".comfy-missing-nodes").count() > 0

    def graph(self) -> list[dict]:
        return self.page.evaluate(GRAPH_STATE)

    def upload_through_button(self, node_id: int, image: Path) -> None:
        """Click Load Image's "choose file to upload" button and pick ``image`` in the file chooser."""
        x, y = self.page.wait_for_function(WIDGET_POINT, arg=[node_id, "upload"], timeout=30000).json_value()
        self.page.mouse.move(x, y)  # the canvas takes a press only where the pointer was seen to arrive
        time.sleep(0.3)
        with self.page.expect_file_chooser(timeout=10000) as chooser:
            self.page.mouse.down()
            self.page.mouse.up()
        chooser.value.set_files(str(image))

    def wait_widget_value(self, node_id: int, widget_name: str, value: Any, timeout: float = 30) -> bool:
        try:
            self.page.wait_for_function(
                "([id, name, value]) => app.graph.getNodeById(id).widgets.find(w => w.name === name).value === value",
                arg=[node_id, widget_name, value], timeout=timeout * 1000)
        except self.timeout_error:  # the widget never showed the value
            return False
        return True

    def run(self) -> None:
        self.page.get_by_role("button", name="Run", exact=True).first.click()

    def wait_shown_image(self, node_id: int, timeout: float) -> Optional[list]:
        try:
            handle = self.page.wait_for_function(SHOWN_IMAGE, arg=node_id, timeout=timeout * 1000)
        except self.timeout_error:  # reported as no image
            return None
        return handle.json_value()


def widget_problems(node: dict, saved: dict, info: dict) -> list[str]:
    """FlowSR widgets that are missing, hold another value than the file saved, or hold one the node refuses."""
    shown = {widget["name"]: widget["value"] for widget in node["widgets"]}
    saved_values = dict(zip((name for name, _ in checker.widget_slots(info)), saved.get("widgets_values", [])))
    problems = []
    for name, kind, options, _ in checker.inputs_of(info):
        if not checker.is_widget(kind, options):
            continue
        if name not in shown:
            problems.append(f"{name}: no widget")
            continue
        if shown[name] != saved_values.get(name):
            problems.append(f"{name}: shows {shown[name]!r}, the file saved {saved_values.get(name)!r}")
        problem = checker.value_problem(kind, options, shown[name])
        if problem:
            problems.append(f"{name}: {problem}")
    return problems


def band_problems(graph: list[dict], object_info: dict) -> list[str]:
    """Nodes of plain widgets (no text area, no image) taller than their widgets need."""
    problems = []
    for node in graph:
        info = object_info.get(node["type"], {})
        fills = info.get("output_node") or any(w["type"] in FILLING_WIDGETS for w in node["widgets"])
        band = node["size"][1] - node["needed"][1]
        if not fills and band > BAND_TOLERANCE:
            problems.append(f"node {node['id']} ({node['type']}) is {node['size'][1]:g} px high, its widgets "
                            f"need {node['needed'][1]:g}: set its size to [{node['size'][0]:g}, {node['needed'][1]:g}]")
    return problems


def check_workflow(comfy: ComfyPage, pack: str, path: Path, object_info: dict, report) -> None:
    workflow = json.loads(path.read_text())
    comfy.open_template(pack, path.stem, len(workflow["nodes"]))
    comfy.screenshot(path.stem)
    graph = comfy.graph()
    report.check(f"browser, {path.stem}: no missing-nodes dialog", not comfy.missing_nodes_dialog())
    unknown = [f"{n['id']} ({n['type']})" for n in graph if not n["known"] or n["has_errors"]]
    report.check(f"browser, {path.stem}: every node type known to the page", not unknown, unknown)
    saved = {node["id"]: node for node in workflow["nodes"]}
    ours = [n for n in graph if n["type"].startswith("FlowSR")]
    problems = [f"node {n['id']} ({n['type']}) {p}" for n in ours
                for p in widget_problems(n, saved[n["id"]], object_info[n["type"]])]
    report.check(f"browser, {path.stem}: every FlowSR widget holds its saved value, which the node accepts",
                 bool(ours) and not problems, problems or f"{len(ours)} FlowSR nodes")
    bands = band_problems(graph, object_info)
    report.check(f"browser, {path.stem}: no blank band under the widgets", not bands, bands)


def write_upload_image(path: Path, side: int) -> None:
    """A picture no earlier run has seen (ComfyUI would serve a cached result for a known one)."""
    from PIL import Image, ImageDraw

    image = Image.linear_gradient("L").resize((side, side)).convert("RGB")
    draw = ImageDraw.Draw(image)
    draw.ellipse([side // 4, side // 4, 3 * side // 4, 3 * side // 4], outline=(255, 60, 40), width=3)
    draw.text((4, 4), time.strftime("%H%M%S"), fill=(20, 200, 255))
    image.save(path)


def check_run_from_page(comfy: ComfyPage, pack: str, path: Path, upload: Path, report, timeout: float) -> dict:
    """Open the workflow, upload ``upload`` through Load Image's button, press Run, see the output."""
    workflow = json.loads(path.read_text())
    comfy.open_template(pack, path.stem, len(workflow["nodes"]))
    graph = {node["type"]: node for node in comfy.graph()}
    loader, saver = graph["LoadImage"], graph["SaveImage"]
    upscale = next(graph[kind] for kind in checker.UPSCALE_NODES if kind in graph)
    comfy.upload_through_button(loader["id"], upload)
    uploaded = comfy.wait_widget_value(loader["id"], "image", upload.name)
    report.check("browser: Load Image's button uploaded the picked file and selected it", uploaded, upload.name)
    comfy.screenshot("uploaded")
    comfy.run()
    shown = comfy.wait_shown_image(saver["id"], timeout)
    comfy.screenshot("ran")
    scale = next(w["value"] for w in upscale["widgets"] if w["name"] == "scale")
    from PIL import Image

    with Image.open(upload) as image:
        expected = [round(image.width * scale), round(image.height * scale)]
    report.check("browser: Run shows the upscaled image in Save Image",
                 bool(shown) and shown[1:] == expected, shown or "no image shown")
    return {"workflow": path.stem, "uploaded": upload.name, "shown": shown}


def run_browser_checks(url: str, chromium: str, pack: str, workflows: list[Path], object_info: dict, report,
                       screenshots: Path, timeout: float) -> dict:
    from playwright.sync_api import sync_playwright

    screenshots.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_FLAGS)
        try:
            comfy = ComfyPage(browser.new_page(viewport=VIEWPORT), url, screenshots)
            comfy.open(timeout)
            cards = {card["name"]: card for card in comfy.template_cards(pack, [path.stem for path in workflows])}
            comfy.screenshot("templates")
            for path in workflows:
                card = cards.get(path.stem, {})
                report.check(f"browser: template card for {path.stem!r}, titled so, with its thumbnail",
                             card.get("title") == path.stem and "_" not in path.stem
                             and all(width > 0 for width in card.get("thumbnail") or [0]), card)
            for path in workflows:
                check_workflow(comfy, pack, path, object_info, report)
            runs = []
            for index, path in enumerate(workflows_run_from_page(workflows)):
                upload = screenshots / f"upload_{index}_{time.strftime('%Y%m%d_%H%M%S')}.png"
                write_upload_image(upload, 96)
                runs.append(check_run_from_page(comfy, pack, path, upload, report, timeout))
        finally:
            browser.close()
    return {"screenshots": comfy.shots, "runs": runs}


def workflows_run_from_page(workflows: list[Path]) -> list[Path]:
    """The simplest workflow on the pack's own loader, and the one on ComfyUI's Load Checkpoint (the driver
    places a small SD 2.1-shaped checkpoint and FlowSR file under the names it uses)."""
    native = [path for path in workflows if "FlowSRUpscaleModel" in checker.node_types(path)]
    return [checker.simplest_workflow(workflows), *native[:1]]
