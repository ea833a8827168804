"""The Jinja2 template of index.html: one self-contained page (inline CSS, figures as data URIs).

Rendered with autoescape on: every ``{{ }}`` is HTML-escaped, so a run or arm named
``<script>...`` shows as text. Nothing here is marked ``|safe``.
"""

HTML_TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>Report: {{ c.name }}</title>
<style>
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1200px; padding: 0 1em; color: #222; }
h1 { font-size: 1.6em; } h2 { margin-top: 2em; border-bottom: 1px solid #ddd; padding-bottom: .2em; }
table { border-collapse: collapse; margin: .6em 0; font-size: 13px; }
th, td { border: 1px solid #ddd; padding: .25em .5em; text-align: left; vertical-align: top; }
th { background: #f4f4f4; } td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tr.baseline td { background: #f7f9ff; } tr.significant td { background: #f3fbf3; }
dl.facts { display: grid; grid-template-columns: max-content 1fr; gap: .2em 1em; }
dl.facts dt { font-weight: 600; } dl.facts dd { margin: 0; }
figure { margin: 1.5em 0; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { color: #555; font-size: 13px; } .small { color: #666; font-size: 12px; }
.scroll { max-height: 32em; overflow: auto; }
p.question { font-size: 15px; color: #333; } p.answer { font-size: 16px; background: #f6f8fa; border-left: 4px solid #4a7; padding: .6em .9em; }
tr.verdict-generalizes-better td { background: #eef9ee; } tr.verdict-hurts td { background: #fdeeee; }
tr.verdict-closes-gap-by-underfitting td { background: #fff8e6; }
pre.sample { background: #fafafa; border: 1px solid #eee; padding: .6em; white-space: pre-wrap; max-height: 14em; overflow: auto; }
</style>
</head>
<body>
<h1>Report: {{ c.name }}</h1>
{% if c.description %}<p class="question">{{ c.description }}</p>{% endif %}
<p class="answer" id="headline"><b>Answer:</b> {{ c.headline }}</p>

<h2 id="verdicts">Verdicts: held-out loss and gap, paired by seed</h2>
{% if verdict_rows %}<table id="verdict-table">
<thead><tr>{% for h in verdict_header %}<th>{{ h }}</th>{% endfor %}</tr></thead>
<tbody>
{% for r in verdict_rows %}<tr class="verdict-{{ r.verdict }}"><td><a href="{{ r.url }}">{{ r.arm }}</a></td><td><b>{{ r.verdict }}</b></td><td class="num">{{ r.n }}</td><td class="num">{{ r.failed }}</td><td class="num">{{ r.loss }}</td><td class="num">{{ r.loss_p }}</td><td class="num">{{ r.gap }}</td><td class="num">{{ r.gap_p }}</td><td class="num">{{ r.seeds }}</td></tr>
{% endfor %}</tbody>
</table>{% endif %}
{% if verdicts %}<ul id="verdict-sentences">
{% for v in verdicts %}<li>{{ v }}</li>
{% endfor %}</ul>{% else %}<p>{{ c.baseline_note }}</p>{% endif %}
{% if c.featured|length < c.arms|length %}<p class="small">Sentences and figures show {{ c.featured|length }} of {{ c.arms|length }} arms: the baseline, every arm with a finding, and the best by held-out loss. The tables and verdicts.csv list all of them.</p>{% endif %}

<h2 id="built-from">Built from</h2>
<dl class="facts">
{% for label, value in facts %}<dt>{{ label }}</dt><dd>{{ value }}</dd>
{% endfor %}</dl>
{% if parent_url %}<p class="small"><a href="{{ parent_url }}">The study's run in MLflow (its description and artifacts hold this report)</a></p>{% endif %}

{% if comparison_rows %}
<h2 id="comparison">Secondary view: {{ noun }} ({{ c.metric }}), paired by seed</h2>
<table id="comparison-table">
<thead><tr><th>arm</th><th>pairs</th><th>mean diff [95% CI]</th><th>t-test p</th><th>Wilcoxon p</th><th>p (Holm)</th><th>P(better)</th><th>better on</th><th>reading</th></tr></thead>
<tbody>
{% for r in comparison_rows %}<tr{% if r.significant %} class="significant"{% endif %}><td><a href="{{ r.url }}">{{ r.arm }}</a></td><td class="num">{{ r.n }}</td><td class="num">{{ r.diff }}</td><td class="num">{{ r.t_p }}</td><td class="num">{{ r.wilcoxon_p }}</td><td class="num">{{ r.p_holm }}</td><td class="num">{{ r.p_better }}</td><td class="num">{{ r.better }}</td><td>{{ r.verdict }}</td></tr>
{% endfor %}</tbody>
</table>
{% endif %}

<h2 id="arms">Per arm: mean &plusmn; std [95% CI]</h2>
<div class="scroll"><table id="arm-table">
<thead><tr><th>arm</th><th>n</th>{% for m in metrics %}<th>{{ m }}</th>{% endfor %}<th>{% if c.baseline %}differs from the baseline{% else %}settings that vary{% endif %}</th></tr></thead>
<tbody>
{% for r in arm_rows %}<tr{% if r.baseline %} class="baseline"{% endif %}><td><a href="{{ r.url }}">{{ r.arm }}</a>{% if r.baseline %} (baseline){% endif %}</td><td class="num">{{ r.n }}</td>{% for m in metrics %}<td class="num">{{ r[m][0] }}<br><span class="small">{{ r[m][1] }}</span></td>{% endfor %}<td>{{ r.settings }}</td></tr>
{% endfor %}</tbody>
</table></div>

<h2 id="figures">Figures</h2>
{% for f, uri in figures %}<figure id="fig-{{ f.name }}">
<img src="{{ uri }}" alt="{{ f.title }}">
<figcaption><b>{{ f.title }}.</b> {{ f.caption }}</figcaption>
</figure>
{% endfor %}
{% if skipped %}<p>Not drawn:</p><ul>
{% for f in skipped %}<li>{{ f.title }}: {{ f.skipped }}</li>
{% endfor %}</ul>{% endif %}

{% if c.samples %}<h2 id="samples">Samples (each arm's first seed)</h2>
{% for arm, (seed, text) in c.samples.items() %}<h3>{{ arm }} <span class="small">seed {{ seed }}</span></h3>
<pre class="sample">{{ text }}</pre>
{% endfor %}{% endif %}

{% if pretraining %}<h2 id="pretraining">Pretraining runs ({{ pretraining|length }})</h2>
<p class="small">The arms that set <code>transfer.init_from: pretrain</code> fine-tuned from these (each run's
<code>harness.pretrain_run</code> tag names its own); they are compared above like any arm.</p>
<div class="scroll"><table id="pretraining-table">
<thead><tr><th>run</th><th>seed</th><th>status</th><th>trained by study</th><th>fine-tuned from it</th><th>best_val_loss</th><th>test_loss</th><th>wall_s</th></tr></thead>
<tbody>
{% for r in pretraining %}<tr><td><a href="{{ r.url }}">{{ r.run }}</a></td><td class="num">{{ r.seed }}</td><td>{{ r.status }}</td><td>{{ r.study }}</td><td class="num">{{ r.used_by }}</td><td class="num">{{ r.best_val_loss }}</td><td class="num">{{ r.test_loss }}</td><td class="num">{{ r.wall_s }}</td></tr>
{% endfor %}</tbody>
</table></div>{% endif %}

<h2 id="runs">Runs ({{ run_rows|length }})</h2>
<div class="scroll"><table id="run-table">
<thead><tr><th>arm</th><th>seed</th><th>run</th>{% for m in run_metrics %}<th>{{ m }}</th>{% endfor %}</tr></thead>
<tbody>
{% for r in run_rows %}<tr><td>{{ r.arm }}</td><td class="num">{{ r.seed }}</td><td><a href="{{ r.url }}">{{ r.run }}</a></td>{% for m in run_metrics %}<td class="num">{{ r[m] }}</td>{% endfor %}</tr>
{% endfor %}</tbody>
</table></div>

<h2 id="excluded">Excluded runs ({{ excluded|length }})</h2>
{% if excluded %}<div class="scroll"><table id="excluded-table">
<thead><tr><th>run</th><th>arm</th><th>status</th><th>reason</th></tr></thead>
<tbody>
{% for r in excluded %}<tr><td><a href="{{ r.url }}">{{ r.run_name or r.run_id }}</a></td><td>{{ r.arm }}</td><td>{{ r.status }}</td><td>{{ r.reason }}</td></tr>
{% endfor %}</tbody>
</table></div>{% else %}<p>None.</p>{% endif %}

<h2 id="how-to-read">How to read this report</h2>
<ul>
{% for t in how_to_read %}<li>{{ t }}</li>
{% endfor %}</ul>
</body>
</html>
"""
