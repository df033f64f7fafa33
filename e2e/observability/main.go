// checkobs keeps vflow's alerts and dashboard honest:
//
//  1. the alerts file (the spec of a PrometheusRule) is loaded by Prometheus' own
//     rule loader (rulefmt: YAML, PromQL, templates), and every alert has a severity,
//     a summary, a description and a runbook_url whose anchor exists in
//     docs/troubleshooting.md;
//  2. every dashboard is valid JSON with what Grafana needs (uid, title, schemaVersion,
//     a data source variable, panels with a data source and targets), and every
//     target and variable query parses with Prometheus' PromQL parser once Grafana's
//     variables are substituted;
//  3. every vflow_* metric named in either exists: registered in the Rust sources
//     (a scan of the prometheus constructors, with the registries' prefixes and const
//     labels) and, where given, served by real binaries (-exposition files, scraped
//     /metrics output, which also checks the scan). Label matchers must name labels
//     the metric has (or target labels the scrape adds), rate()/increase() must take
//     counters or histogram series, deriv()/delta() gauges.
//
// Usage: checkobs -alerts FILE -dashboards DIR -sources DIR -runbooks FILE [-exposition FILE]...
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/model/rulefmt"
	"github.com/prometheus/prometheus/promql/parser"
)

type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, ",") }
func (m *multiFlag) Set(v string) error { *m = append(*m, v); return nil }

// Labels any scraped series may carry besides its own: what Prometheus and the
// Prometheus Operator add to every target, and what vflow's PodMonitor copies from
// the function pods' labels (docs/observability.md).
var targetLabels = map[string]bool{
	"job": true, "instance": true, "namespace": true, "pod": true, "container": true,
	"service": true, "endpoint": true, "function": true, "workflow": true, "stage": true,
}

type metric struct {
	name     string
	typ      string // counter, gauge, histogram
	labels   map[string]bool
	source   string // file that registers it
	scraped  bool
	referred []string
}

type checker struct {
	metrics  map[string]*metric
	errors   []string
	external map[string][]string // non-vflow names and where they are used
	missing  map[string][]string // vflow names that exist nowhere, and where used
	exprs    int
	p        parser.Parser
}

func (c *checker) errorf(format string, args ...any) {
	c.errors = append(c.errors, fmt.Sprintf(format, args...))
}

var (
	ctorRe      = regexp.MustCompile(`\b(?:Int)?(Counter|Gauge|Histogram)(Vec)?::(?:new|with_opts)\(\s*(?:(?:Histogram)?Opts::new\(\s*)?"([a-zA-Z_:][a-zA-Z0-9_:]*)"`)
	prefixRe    = regexp.MustCompile(`new_custom\(\s*Some\(\s*"([a-zA-Z_][a-zA-Z0-9_]*)"`)
	constLblRe  = regexp.MustCompile(`new_custom\([^;]*?\[\s*\(\s*"([a-zA-Z_][a-zA-Z0-9_]*)"`)
	labelsRe    = regexp.MustCompile(`&\[\s*((?:"[a-zA-Z_][a-zA-Z0-9_]*"\s*,?\s*)+)\]`)
	quotedRe    = regexp.MustCompile(`"([a-zA-Z_][a-zA-Z0-9_]*)"`)
	nameRe      = regexp.MustCompile(`^[a-zA-Z_:][a-zA-Z0-9_:]*$`)
	typeLineRe  = regexp.MustCompile(`^# TYPE ([a-zA-Z_:][a-zA-Z0-9_:]*) (\w+)$`)
	sampleRe    = regexp.MustCompile(`^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s`)
	sampleLblRe = regexp.MustCompile(`([a-zA-Z_][a-zA-Z0-9_]*)="`)
	varRe       = regexp.MustCompile(`\$\{?([a-zA-Z_][a-zA-Z0-9_]*)\}?`)
	labelValsRe = regexp.MustCompile(`^label_values\((.*),\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\)$`)
	headingRe   = regexp.MustCompile(`(?m)^#{1,6}\s+(.+?)\s*$`)
	slugDropRe  = regexp.MustCompile(`[^\p{L}\p{N} _-]`)
)

// scanSources finds the metrics the Rust code registers under dir (src/ folders only,
// not tests).
func (c *checker) scanSources(dir string) {
	found := 0
	err := filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if d.Name() == "target" || d.Name() == "tests" || strings.HasPrefix(d.Name(), ".") {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(path, ".rs") || !strings.Contains(path, string(filepath.Separator)+"src"+string(filepath.Separator)) {
			return nil
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		text := string(data)
		prefix := ""
		if m := prefixRe.FindStringSubmatch(text); m != nil {
			prefix = m[1] + "_"
		}
		var constLabels []string
		if m := constLblRe.FindStringSubmatch(text); m != nil {
			constLabels = append(constLabels, m[1])
		}
		locs := ctorRe.FindAllStringSubmatchIndex(text, -1)
		for i, loc := range locs {
			kind := strings.ToLower(text[loc[2]:loc[3]])
			isVec := loc[4] >= 0
			name := text[loc[6]:loc[7]]
			if prefix != "" && !strings.HasPrefix(name, prefix) {
				name = prefix + name
			}
			end := len(text)
			if i+1 < len(locs) {
				end = locs[i+1][0]
			}
			lbls := map[string]bool{}
			for _, l := range constLabels {
				lbls[l] = true
			}
			if isVec {
				if m := labelsRe.FindStringSubmatch(text[loc[1]:end]); m != nil {
					for _, q := range quotedRe.FindAllStringSubmatch(m[1], -1) {
						lbls[q[1]] = true
					}
				} else {
					c.errorf("%s: cannot find the label names of %s (a *Vec metric)", path, name)
				}
			}
			rel, _ := filepath.Rel(dir, path)
			if prev, ok := c.metrics[name]; ok {
				if prev.typ != kind {
					c.errorf("%s is registered as a %s in %s and as a %s in %s", name, prev.typ, prev.source, kind, rel)
				}
				for l := range lbls {
					prev.labels[l] = true
				}
				continue
			}
			c.metrics[name] = &metric{name: name, typ: kind, labels: lbls, source: rel}
			found++
		}
		return nil
	})
	if err != nil {
		c.errorf("scanning %s: %v", dir, err)
	}
	if found == 0 {
		c.errorf("no metric registrations found under %s: the scan is broken", dir)
	}
}

// readExposition adds what a real /metrics answer lists, and checks that the source
// scan agrees with it (name, type, label names).
func (c *checker) readExposition(path string) {
	data, err := os.ReadFile(path)
	if err != nil {
		c.errorf("%v", err)
		return
	}
	families := map[string]string{}
	seen := map[string]map[string]bool{}
	for _, line := range strings.Split(string(data), "\n") {
		if m := typeLineRe.FindStringSubmatch(line); m != nil {
			families[m[1]] = m[2]
			seen[m[1]] = map[string]bool{}
			continue
		}
		m := sampleRe.FindStringSubmatch(line + " ")
		if m == nil || strings.HasPrefix(line, "#") {
			continue
		}
		fam := m[1]
		if _, ok := families[fam]; !ok {
			for _, suf := range []string{"_bucket", "_sum", "_count"} {
				if b := strings.TrimSuffix(fam, suf); b != fam && families[b] == "histogram" {
					fam = b
				}
			}
		}
		if s, ok := seen[fam]; ok {
			for _, l := range sampleLblRe.FindAllStringSubmatch(m[2], -1) {
				if l[1] != "le" {
					s[l[1]] = true
				}
			}
		}
	}
	n := 0
	for name, typ := range families {
		if !strings.HasPrefix(name, "vflow_") {
			continue
		}
		n++
		m, ok := c.metrics[name]
		if !ok {
			c.errorf("%s: %s is served but the source scan did not find it (fix the scan in e2e/observability/main.go)", path, name)
			c.metrics[name] = &metric{name: name, typ: typ, labels: seen[name], source: path, scraped: true}
			continue
		}
		m.scraped = true
		if m.typ != typ {
			c.errorf("%s: %s is served as a %s, the source scan says %s", path, name, typ, m.typ)
		}
		for l := range seen[name] {
			if !m.labels[l] {
				c.errorf("%s: %s is served with label %q that the source scan did not find", path, name, l)
			}
		}
	}
	if n == 0 {
		c.errorf("%s: no vflow_* metric families in it", path)
	}
}

// resolve maps a series name to its metric and whether it is a histogram's series.
func (c *checker) resolve(name string) (*metric, string) {
	if m, ok := c.metrics[name]; ok {
		return m, ""
	}
	for _, suf := range []string{"_bucket", "_sum", "_count"} {
		if b := strings.TrimSuffix(name, suf); b != name {
			if m, ok := c.metrics[b]; ok && m.typ == "histogram" {
				return m, suf
			}
		}
	}
	return nil, ""
}

func selectorNames(vs *parser.VectorSelector) ([]string, error) {
	if vs.Name != "" {
		return []string{vs.Name}, nil
	}
	for _, m := range vs.LabelMatchers {
		if m.Name != labels.MetricName {
			continue
		}
		switch m.Type {
		case labels.MatchEqual:
			return []string{m.Value}, nil
		case labels.MatchRegexp:
			parts := strings.Split(m.Value, "|")
			for _, p := range parts {
				if !nameRe.MatchString(p) {
					return nil, fmt.Errorf("__name__=~%q is not a list of names", m.Value)
				}
			}
			return parts, nil
		}
	}
	return nil, fmt.Errorf("a selector without a metric name: %s", vs.String())
}

// checkExpr parses one expression and checks the metrics it names.
func (c *checker) checkExpr(where, expr string) {
	c.exprs++
	e, err := c.p.ParseExpr(expr)
	if err != nil {
		c.errorf("%s: %v\n    in: %s", where, err, strings.TrimSpace(expr))
		return
	}
	parser.Inspect(e, func(node parser.Node, _ []parser.Node) error {
		switch n := node.(type) {
		case *parser.VectorSelector:
			names, err := selectorNames(n)
			if err != nil {
				c.errorf("%s: %v", where, err)
				return nil
			}
			for _, name := range names {
				if !strings.HasPrefix(name, "vflow_") {
					c.external[name] = appendOnce(c.external[name], where)
					continue
				}
				m, suf := c.resolve(name)
				if m == nil {
					c.missing[name] = appendOnce(c.missing[name], where)
					continue
				}
				m.referred = appendOnce(m.referred, where)
				if m.typ == "histogram" && suf == "" {
					c.errorf("%s: %s is a histogram: use %s_bucket, _sum or _count", where, name, name)
				}
				for _, lm := range n.LabelMatchers {
					if lm.Name == labels.MetricName || m.labels[lm.Name] || targetLabels[lm.Name] || (suf == "_bucket" && lm.Name == "le") {
						continue
					}
					c.errorf("%s: %s has no label %q (it has %s)", where, name, lm.Name, keys(m.labels))
				}
			}
		case *parser.Call:
			var want string
			switch n.Func.Name {
			case "rate", "irate", "increase":
				want = "counter"
			case "deriv", "delta", "idelta":
				want = "gauge"
			default:
				return nil
			}
			ms, ok := n.Args[0].(*parser.MatrixSelector)
			if !ok {
				return nil
			}
			vs, ok := ms.VectorSelector.(*parser.VectorSelector)
			if !ok {
				return nil
			}
			names, err := selectorNames(vs)
			if err != nil {
				return nil
			}
			for _, name := range names {
				m, suf := c.resolve(name)
				if m == nil {
					continue
				}
				got := m.typ
				if suf != "" {
					got = "counter" // a histogram's _bucket, _sum and _count are counters
				}
				if got != want {
					c.errorf("%s: %s() of %s, a %s", where, n.Func.Name, name, got)
				}
			}
		}
		return nil
	})
}

func appendOnce(list []string, s string) []string {
	for _, x := range list {
		if x == s {
			return list
		}
	}
	return append(list, s)
}

func keys(m map[string]bool) string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	if len(out) == 0 {
		return "no labels"
	}
	return strings.Join(out, ", ")
}

// slug is GitHub's anchor for a heading.
func slug(heading string) string {
	s := strings.ToLower(strings.TrimSpace(heading))
	s = slugDropRe.ReplaceAllString(s, "")
	return strings.ReplaceAll(s, " ", "-")
}

func (c *checker) checkAlerts(path, runbooks string) {
	data, err := os.ReadFile(path)
	if err != nil {
		c.errorf("%v", err)
		return
	}
	anchors := map[string]bool{}
	if doc, err := os.ReadFile(runbooks); err != nil {
		c.errorf("runbooks: %v", err)
	} else {
		for _, m := range headingRe.FindAllStringSubmatch(string(doc), -1) {
			anchors[slug(m[1])] = true
		}
	}
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	groups, errs := rulefmt.Parse(data, false, model.LegacyValidation, c.p, logger)
	for _, e := range errs {
		c.errorf("%s: %v", path, e)
	}
	if groups == nil {
		return
	}
	rules := 0
	names := map[string]bool{}
	for _, g := range groups.Groups {
		for _, r := range g.Rules {
			rules++
			where := fmt.Sprintf("%s: group %s, %s%s", filepath.Base(path), g.Name, r.Alert, r.Record)
			if r.Alert != "" {
				if names[r.Alert] {
					c.errorf("%s: alert name used twice", where)
				}
				names[r.Alert] = true
				switch r.Labels["severity"] {
				case "critical", "warning", "info":
				default:
					c.errorf("%s: severity must be critical, warning or info, not %q", where, r.Labels["severity"])
				}
				for _, a := range []string{"summary", "description", "runbook_url"} {
					if strings.TrimSpace(r.Annotations[a]) == "" {
						c.errorf("%s: no %s annotation", where, a)
					}
				}
				url := r.Annotations["runbook_url"]
				if i := strings.Index(url, "docs/troubleshooting.md#"); i < 0 {
					c.errorf("%s: runbook_url %q does not point into docs/troubleshooting.md", where, url)
				} else if a := url[i+len("docs/troubleshooting.md#"):]; !anchors[a] {
					c.errorf("%s: runbook_url anchor #%s is not a heading of %s", where, a, runbooks)
				}
			}
			c.checkExpr(where, r.Expr)
		}
	}
	if rules == 0 {
		c.errorf("%s: no rules", path)
	}
	fmt.Printf("alerts: %s: %d rules in %d groups loaded by Prometheus' rule loader\n", path, rules, len(groups.Groups))
}

// Values the checker gives Grafana's built-in variables.
var builtins = map[string]string{
	"__rate_interval": "5m", "__interval": "1m", "__range": "1h",
	"__range_s": "3600", "__interval_ms": "60000",
}

func str(m map[string]any, k string) string {
	s, _ := m[k].(string)
	return s
}

func (c *checker) checkDashboard(path string) {
	data, err := os.ReadFile(path)
	if err != nil {
		c.errorf("%v", err)
		return
	}
	var d map[string]any
	if err := json.Unmarshal(data, &d); err != nil {
		c.errorf("%s: not JSON: %v", path, err)
		return
	}
	base := filepath.Base(path)
	for _, k := range []string{"uid", "title"} {
		if str(d, k) == "" {
			c.errorf("%s: no %s", base, k)
		}
	}
	if v, ok := d["schemaVersion"].(float64); !ok || v < 30 {
		c.errorf("%s: schemaVersion missing or older than 30", base)
	}
	values := map[string]string{}
	for k, v := range builtins {
		values[k] = v
	}
	dsVar := ""
	var queries []map[string]any
	templating, _ := d["templating"].(map[string]any)
	list, _ := templating["list"].([]any)
	for _, x := range list {
		v, _ := x.(map[string]any)
		name := str(v, "name")
		if name == "" {
			c.errorf("%s: a variable without a name", base)
			continue
		}
		switch str(v, "type") {
		case "datasource":
			if str(v, "query") != "prometheus" {
				c.errorf("%s: data source variable %s is not of type prometheus", base, name)
			}
			dsVar = name
			values[name] = "ds"
		case "custom", "interval":
			cur, _ := v["current"].(map[string]any)
			val := str(cur, "value")
			if val == "" {
				val = strings.Split(str(v, "query"), ",")[0]
			}
			values[name] = val
		case "query":
			values[name] = ".*"
			queries = append(queries, v)
		default:
			values[name] = ".*"
		}
	}
	if dsVar == "" {
		c.errorf("%s: no data source variable (type datasource, query prometheus)", base)
	}
	subst := func(where, s string) string {
		return varRe.ReplaceAllStringFunc(s, func(m string) string {
			name := varRe.FindStringSubmatch(m)[1]
			if v, ok := values[name]; ok {
				return v
			}
			c.errorf("%s: unknown variable $%s", where, name)
			return m
		})
	}
	checkDS := func(where string, ds any) {
		m, ok := ds.(map[string]any)
		if !ok {
			c.errorf("%s: no datasource", where)
			return
		}
		uid := str(m, "uid")
		if str(m, "type") != "prometheus" || (uid != "${"+dsVar+"}" && uid != "$"+dsVar) {
			c.errorf("%s: datasource must be {type: prometheus, uid: ${%s}}, not %v", where, dsVar, m)
		}
	}
	for _, v := range queries {
		where := fmt.Sprintf("%s: variable %s", base, str(v, "name"))
		checkDS(where, v["datasource"])
		q := str(v, "definition")
		if qm, ok := v["query"].(map[string]any); ok {
			q = str(qm, "query")
		} else if s, ok := v["query"].(string); ok {
			q = s
		}
		q = strings.TrimSpace(q)
		if m := labelValsRe.FindStringSubmatch(q); m != nil {
			c.checkExpr(where, subst(where, m[1]))
		} else if strings.HasPrefix(q, "query_result(") && strings.HasSuffix(q, ")") {
			c.checkExpr(where, subst(where, q[len("query_result("):len(q)-1]))
		} else {
			c.errorf("%s: query %q is neither label_values(selector, label) nor query_result(expr)", where, q)
		}
	}
	ids := map[float64]bool{}
	panels, targets := 0, 0
	var walk func([]any)
	walk = func(ps []any) {
		for _, x := range ps {
			p, _ := x.(map[string]any)
			title := str(p, "title")
			where := fmt.Sprintf("%s: panel %q", base, title)
			id, ok := p["id"].(float64)
			if !ok || ids[id] {
				c.errorf("%s: id missing or not unique", where)
			}
			ids[id] = true
			if _, ok := p["gridPos"].(map[string]any); !ok {
				c.errorf("%s: no gridPos", where)
			}
			typ := str(p, "type")
			if typ == "" {
				c.errorf("%s: no type", where)
			}
			if typ == "row" {
				sub, _ := p["panels"].([]any)
				walk(sub)
				continue
			}
			if typ == "text" {
				continue
			}
			panels++
			if title == "" {
				c.errorf("%s: no title", where)
			}
			checkDS(where, p["datasource"])
			ts, _ := p["targets"].([]any)
			if len(ts) == 0 {
				c.errorf("%s: no targets", where)
			}
			refs := map[string]bool{}
			for _, y := range ts {
				t, _ := y.(map[string]any)
				ref := str(t, "refId")
				w := fmt.Sprintf("%s target %s", where, ref)
				if ref == "" || refs[ref] {
					c.errorf("%s: refId missing or not unique", w)
				}
				refs[ref] = true
				checkDS(w, t["datasource"])
				expr := str(t, "expr")
				if strings.TrimSpace(expr) == "" {
					c.errorf("%s: no expr", w)
					continue
				}
				targets++
				c.checkExpr(w, subst(w, expr))
			}
		}
	}
	ps, _ := d["panels"].([]any)
	if len(ps) == 0 {
		c.errorf("%s: no panels", base)
	}
	walk(ps)
	fmt.Printf("dashboard: %s: %d panels, %d targets, %d variable queries\n", path, panels, targets, len(queries))
}

func main() {
	alerts := flag.String("alerts", "", "the alerts file (a PrometheusRule spec: groups)")
	dashboards := flag.String("dashboards", "", "a folder of Grafana dashboard JSON files")
	sources := flag.String("sources", "", "the Rust sources to scan for metric registrations")
	runbooks := flag.String("runbooks", "", "the troubleshooting page the runbook_urls point into")
	var expositions multiFlag
	flag.Var(&expositions, "exposition", "a scraped /metrics answer (repeatable)")
	flag.Parse()
	if *alerts == "" || *dashboards == "" || *sources == "" || *runbooks == "" {
		flag.Usage()
		os.Exit(2)
	}
	c := &checker{
		metrics:  map[string]*metric{},
		external: map[string][]string{},
		missing:  map[string][]string{},
		p:        parser.NewParser(parser.Options{}),
	}
	c.scanSources(*sources)
	scanned := len(c.metrics)
	for _, e := range expositions {
		c.readExposition(e)
	}
	scraped := 0
	for _, m := range c.metrics {
		if m.scraped {
			scraped++
		}
	}
	fmt.Printf("metrics: %d vflow metrics registered in %s, %d of them also seen in %d scraped /metrics answers\n",
		scanned, *sources, scraped, len(expositions))

	c.checkAlerts(*alerts, *runbooks)
	files, _ := filepath.Glob(filepath.Join(*dashboards, "*.json"))
	if len(files) == 0 {
		c.errorf("no dashboards in %s", *dashboards)
	}
	for _, f := range files {
		c.checkDashboard(f)
	}
	fmt.Printf("expressions: %d parsed\n", c.exprs)

	var ext []string
	for n := range c.external {
		ext = append(ext, n)
	}
	sort.Strings(ext)
	if len(ext) > 0 {
		fmt.Printf("not vflow's, not checked against the code: %s\n", strings.Join(ext, ", "))
	}
	var unused []string
	for n, m := range c.metrics {
		if len(m.referred) == 0 && strings.HasPrefix(n, "vflow_") {
			unused = append(unused, n)
		}
	}
	sort.Strings(unused)
	if len(unused) > 0 {
		fmt.Printf("registered but on no panel and in no alert: %s\n", strings.Join(unused, ", "))
	}

	var missing []string
	for n := range c.missing {
		missing = append(missing, n)
	}
	sort.Strings(missing)
	for _, n := range missing {
		c.errorf("MISSING METRIC %s: no Rust source registers it (used by: %s)", n, strings.Join(c.missing[n], "; "))
	}
	if len(c.errors) > 0 {
		fmt.Fprintf(os.Stderr, "\ncheck-observability: %d problem(s):\n", len(c.errors))
		for _, e := range c.errors {
			fmt.Fprintf(os.Stderr, "  - %s\n", e)
		}
		if len(missing) > 0 {
			fmt.Fprintf(os.Stderr, "missing metric names: %s\n", strings.Join(missing, " "))
		}
		os.Exit(1)
	}
	fmt.Println("check-observability: OK")
}
