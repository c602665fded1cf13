// The dashboard's behaviour: calls to the REST API (session cookie + CSRF header), live progress from
// the server-sent events, the loss chart. No dependencies; every page loads this one file.
(() => {
  "use strict";

  const $ = (selector, root = document) => root.querySelector(selector);
  const $$ = (selector, root = document) => Array.from(root.querySelectorAll(selector));
  const csrf = () => ($('meta[name="csrf-token"]') || {}).content || "";

  function notice(text, kind = "error") {
    const box = $("#notice");
    if (!box) return;
    box.textContent = text;
    box.className = `notice ${kind}`;
    box.hidden = !text;
    if (text) box.focus();
  }

  // A message to show after the reload that follows an action.
  function flash(text) {
    sessionStorage.setItem("distillery-flash", text);
    location.reload();
  }

  class ApiError extends Error {
    constructor(status, message) {
      super(`${status}: ${message}`);
      this.status = status;
    }
  }

  async function api(method, path, body) {
    const headers = { Accept: "application/json" };
    if (method !== "GET") headers["X-CSRF-Token"] = csrf();
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const response = await fetch(path, {
      method,
      headers,
      credentials: "same-origin",
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    let data = null;
    try {
      data = await response.json();
    } catch (_) {
      data = null;
    }
    if (!response.ok) {
      const message = (data && data.error && data.error.message) || response.statusText;
      if (response.status === 401) {
        location.assign(`/ui/login?next=${encodeURIComponent(location.pathname)}`);
      }
      throw new ApiError(response.status, message);
    }
    return data;
  }

  async function act(button, work) {
    button.disabled = true;
    button.setAttribute("aria-busy", "true");
    try {
      await work();
    } catch (error) {
      notice(error.message);
    } finally {
      button.disabled = false;
      button.removeAttribute("aria-busy");
    }
  }

  // ------------------------------------------------------------------ jobs

  function jobRow(row, job) {
    const settled = job.done + job.failed;
    const status = $('[data-field="status"]', row);
    status.textContent = job.status;
    status.dataset.status = job.status;
    const bar = $('[data-field="bar"]', row);
    bar.max = job.total || 1;
    bar.value = settled;
    $('[data-field="pct"]', row).textContent = `${job.total ? Math.round((100 * settled) / job.total) : 0} %`;
    $('[data-field="counts"]', row).textContent = `${settled}/${job.total}`;
    const list = $('[data-field="teachers"]', row);
    list.replaceChildren(
      ...job.progress.map((t) => {
        const item = document.createElement("li");
        const tokens = t.prompt_tokens + t.completion_tokens;
        item.textContent = `${t.teacher}: ${t.done} done, ${t.failed} failed, ${tokens} tokens`;
        return item;
      }),
    );
    if (["completed", "completed_with_errors", "cancelled", "failed"].includes(job.status)) {
      const cancel = $("[data-cancel]", row);
      if (cancel) cancel.remove();
    }
  }

  function followJob(row) {
    const events = new EventSource(`/v1/rationale-jobs/${encodeURIComponent(row.dataset.job)}/events`);
    events.addEventListener("progress", (event) => jobRow(row, JSON.parse(event.data)));
    events.addEventListener("end", (event) => {
      jobRow(row, JSON.parse(event.data));
      row.dataset.live = "no";
      events.close();
    });
  }

  function jobsPage() {
    $$('tr[data-live="yes"]').forEach(followJob);
    $$("[data-cancel]").forEach((button) =>
      button.addEventListener("click", () =>
        act(button, async () => {
          const job = await api("POST", `/v1/rationale-jobs/${encodeURIComponent(button.dataset.cancel)}/cancel`);
          flash(`Job ${job.id} cancelled.`);
        }),
      ),
    );
    const form = $("#job-form");
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      const data = new FormData(form);
      const strategy = data.get("strategy");
      const body = {
        dataset: data.get("dataset"),
        split: data.get("split"),
        teachers: data.getAll("teachers"),
        in_context: { strategy, k: strategy === "none" ? 0 : Number(data.get("k") || 0) },
      };
      if (data.get("limit")) body.limit = Number(data.get("limit"));
      if (data.get("max_tokens")) body.generation = { max_tokens: Number(data.get("max_tokens")) };
      if (!body.teachers.length) {
        notice("Pick at least one teacher.");
        return;
      }
      act($('button[type="submit"]', form), async () => {
        const job = await api("POST", "/v1/rationale-jobs", body);
        flash(`Job ${job.id} queued: ${job.total} rationales.`);
      });
    });
  }

  // ------------------------------------------------------------------ training run

  const SERIES_LIMIT = 4;

  function drawLoss(svg, points) {
    const ns = "http://www.w3.org/2000/svg";
    const width = 640;
    const height = 260;
    const pad = { left: 56, right: 12, top: 12, bottom: 32 };
    svg.replaceChildren();
    const keys = ["loss", ...new Set(points.flatMap((p) => Object.keys(p).filter((k) => k.startsWith("loss_"))))]
      .slice(0, SERIES_LIMIT);
    const values = points.flatMap((p) => keys.map((k) => p[k]).filter((v) => typeof v === "number"));
    const add = (name, attrs, text) => {
      const node = document.createElementNS(ns, name);
      Object.entries(attrs).forEach(([k, v]) => node.setAttribute(k, v));
      if (text !== undefined) node.textContent = text;
      svg.appendChild(node);
      return node;
    };
    add("line", { x1: pad.left, y1: height - pad.bottom, x2: width - pad.right, y2: height - pad.bottom, class: "axis" });
    add("line", { x1: pad.left, y1: pad.top, x2: pad.left, y2: height - pad.bottom, class: "axis" });
    if (!values.length) {
      add("text", { x: width / 2, y: height / 2, "text-anchor": "middle", class: "label" }, "no loss logged yet");
      return;
    }
    const steps = points.map((p) => p.step);
    const [x0, x1] = [Math.min(...steps), Math.max(...steps)];
    const [y0, y1] = [Math.min(...values), Math.max(...values)];
    const x = (s) => pad.left + ((s - x0) / (x1 - x0 || 1)) * (width - pad.left - pad.right);
    const y = (v) => height - pad.bottom - ((v - y0) / (y1 - y0 || 1)) * (height - pad.top - pad.bottom);
    add("text", { x: pad.left - 6, y: pad.top + 10, "text-anchor": "end", class: "label" }, y1.toFixed(3));
    add("text", { x: pad.left - 6, y: height - pad.bottom, "text-anchor": "end", class: "label" }, y0.toFixed(3));
    add("text", { x: pad.left, y: height - 10, class: "label" }, `step ${x0}`);
    add("text", { x: width - pad.right, y: height - 10, "text-anchor": "end", class: "label" }, `step ${x1}`);
    keys.forEach((key, i) => {
      const line = points.filter((p) => typeof p[key] === "number").map((p) => `${x(p.step)},${y(p[key])}`);
      if (!line.length) return;
      add("polyline", { points: line.join(" "), class: `series s${i}` });
      add("text", { x: width - pad.right - 4, y: pad.top + 12 + 14 * i, "text-anchor": "end", class: `legend s${i}` }, key);
    });
  }

  function trainingRunPage() {
    const svg = $("#loss-chart");
    const points = JSON.parse($("#loss-points").textContent || "[]");
    drawLoss(svg, points);
    const run = $("#run");
    if (run.dataset.live !== "yes") return;
    const events = new EventSource(`/v1/training-runs/${encodeURIComponent(run.dataset.run)}/events`);
    const update = (event) => {
      const data = JSON.parse(event.data);
      const status = $('[data-field="status"]', run);
      status.textContent = data.status;
      status.dataset.status = data.status;
      $('[data-field="bar"]', run).value = data.progress;
      $('[data-field="steps"]', run).textContent = `${data.step}/${data.total_steps}`;
      const last = data.last_loss;
      if (last && (!points.length || points[points.length - 1].step < last.step)) {
        points.push(last);
        drawLoss(svg, points);
        $('[data-field="points"]').textContent = String(points.length);
        $('[data-field="last-loss"]').textContent = typeof last.loss === "number" ? last.loss.toFixed(4) : "-";
      }
    };
    events.addEventListener("progress", update);
    events.addEventListener("end", (event) => {
      update(event);
      events.close();
      flash(`Run ${run.dataset.run} is ${JSON.parse(event.data).status}.`);
    });
  }

  // ------------------------------------------------------------------ models

  function modelsPage() {
    $$("[data-promote]").forEach((button) =>
      button.addEventListener("click", () =>
        act(button, async () => {
          notice(`Loading ${button.dataset.label}...`, "info");
          const model = await api("POST", `/v1/registry/models/${encodeURIComponent(button.dataset.promote)}/promote?wait=true`);
          flash(`${model.model} is in production${model.serving ? " and served here" : ""}.`);
        }),
      ),
    );
  }

  // ------------------------------------------------------------------ playground

  function playgroundPage() {
    const form = $("#predict-form");
    const out = $("#answer");
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      const data = new FormData(form);
      const body = {
        question: data.get("question"),
        options: String(data.get("options"))
          .split("\n")
          .map((s) => s.trim())
          .filter(Boolean),
        explain: data.get("explain") === "on",
        max_rationale_tokens: Number(data.get("max_rationale_tokens") || 64),
      };
      if (data.get("context")) body.context = data.get("context");
      if (data.get("model")) body.model = data.get("model");
      if (data.get("teacher")) body.teacher = data.get("teacher");
      act($('button[type="submit"]', form), async () => {
        notice("");
        const answer = await api("POST", "/v1/predict", body);
        $('[data-field="answer"]', out).textContent = `(${answer.answer_letter}) ${answer.answer}`;
        $('[data-field="meta"]', out).textContent =
          `${answer.model} · ${answer.method} · ${Math.round(answer.latency_ms)} ms`;
        $('[data-field="rationale"]', out).textContent = answer.rationale || "";
        $('[data-field="rationale-box"]', out).hidden = !answer.rationale;
        out.hidden = false;
      });
    });
  }

  const PAGES = { jobs: jobsPage, training_run: trainingRunPage, models: modelsPage, playground: playgroundPage };

  document.addEventListener("DOMContentLoaded", () => {
    const message = sessionStorage.getItem("distillery-flash");
    if (message) {
      sessionStorage.removeItem("distillery-flash");
      notice(message, "ok");
    }
    const setup = PAGES[document.body.dataset.page];
    if (setup) setup();
  });
})();
