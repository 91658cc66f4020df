package node

import (
	"net/http"
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/trireme-go/trireme/buildinfo"
)

// metricsCollector exposes a StatsSource's Stats to Prometheus. It reads the
// counters when scraped, so the packet path keeps its plain atomic counters.
type metricsCollector struct {
	c StatsSource

	counters, drops, puDrops, pus, flows, policyOK, policies *prometheus.Desc
	k8sConnected, k8sUnenforced                              *prometheus.Desc
	capacity, perPU, puFlows, puRefused                      *prometheus.Desc
	ringSize, ringRecords                                    *prometheus.Desc
	buildInfo                                                *prometheus.Desc
}

func newMetricsCollector(c StatsSource) *metricsCollector {
	return &metricsCollector{
		c: c,
		counters: prometheus.NewDesc("trireme_dataplane_total",
			"Dataplane events since the daemon started, by kind (packets, forwarded, injected, resets, kernel-authorized, ...).", []string{"kind"}, nil),
		drops: prometheus.NewDesc("trireme_drops_total",
			"Packets dropped (or answered with a RST) since the daemon started, by reason (docs/reasons.md).", []string{"reason"}, nil),
		puDrops: prometheus.NewDesc("trireme_pu_drops_total",
			"A PU's own frames the kernel dropped since it was attached, by reason (spoofed-source, rogue-router, pu-packet-budget).", []string{"pu", "reason"}, nil),
		pus:   prometheus.NewDesc("trireme_pus", "Processing units enforced.", nil, nil),
		flows: prometheus.NewDesc("trireme_flows", "Flows tracked by the enforcement core.", nil, nil),
		policyOK: prometheus.NewDesc("trireme_policy_file_valid",
			"1 when the policy file's newest content is in force, 0 when it was rejected (the previous policy stays in force).", nil, nil),
		policies: prometheus.NewDesc("trireme_policies", "Policies in the policy in force.", nil, nil),
		k8sConnected: prometheus.NewDesc("trireme_kubernetes_api_reachable",
			"1 while the Kubernetes API server is reachable; 0 while the node enforces what it last knew.", nil, nil),
		k8sUnenforced: prometheus.NewDesc("trireme_kubernetes_pods_unenforced", "Pods of this node that are not enforced (see trireme stats).", nil, nil),
		capacity:      prometheus.NewDesc("trireme_flow_table_capacity", "The most flows the enforcement core tracks (all PUs).", nil, nil),
		perPU:         prometheus.NewDesc("trireme_flow_table_per_pu", "The most flows one PU may hold (its share of the flow table).", nil, nil),
		puFlows:       prometheus.NewDesc("trireme_pu_flows", "Flows a PU holds in the flow table.", []string{"pu"}, nil),
		puRefused: prometheus.NewDesc("trireme_pu_flows_refused_total",
			"New flows of a PU refused for lack of room: its share full of established flows (flow-quota), or the table (table-full).", []string{"pu"}, nil),
		ringSize:    prometheus.NewDesc("trireme_flow_ring_size", "The most flow records the daemon keeps in memory (observe.flowRing).", nil, nil),
		ringRecords: prometheus.NewDesc("trireme_flow_ring_records", "Flow records the daemon holds in memory for trireme flows and the web page.", nil, nil),
		buildInfo: prometheus.NewDesc("trireme_build_info", "1, labelled with the running build: version, commit (vcs.revision), modified (vcs.modified) and Go version.",
			[]string{"version", "commit", "modified", "goversion"}, nil),
	}
}

func (m *metricsCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{m.counters, m.drops, m.puDrops, m.pus, m.flows, m.policyOK, m.policies, m.capacity, m.perPU, m.puFlows, m.puRefused, m.ringSize, m.ringRecords, m.buildInfo, m.k8sConnected, m.k8sUnenforced} {
		ch <- d
	}
}

func (m *metricsCollector) Collect(ch chan<- prometheus.Metric) {
	bi := buildinfo.Get()
	ch <- prometheus.MustNewConstMetric(m.buildInfo, prometheus.GaugeValue, 1, bi.Version, bi.Commit, strconv.FormatBool(bi.Modified), bi.Go)
	s := m.c.Stats()
	for k, v := range s.Counters {
		ch <- prometheus.MustNewConstMetric(m.counters, prometheus.CounterValue, float64(v), k)
	}
	for r, v := range s.Drops {
		ch <- prometheus.MustNewConstMetric(m.drops, prometheus.CounterValue, float64(v), r)
	}
	for _, p := range m.c.ListPUs() {
		for r, v := range p.Drops {
			ch <- prometheus.MustNewConstMetric(m.puDrops, prometheus.CounterValue, float64(v), p.ID, r)
		}
	}
	ch <- prometheus.MustNewConstMetric(m.pus, prometheus.GaugeValue, float64(s.PUs))
	ch <- prometheus.MustNewConstMetric(m.flows, prometheus.GaugeValue, float64(s.Flows))
	ok := 1.0
	if s.Policy.LastError != "" {
		ok = 0
	}
	ch <- prometheus.MustNewConstMetric(m.policyOK, prometheus.GaugeValue, ok)
	ch <- prometheus.MustNewConstMetric(m.policies, prometheus.GaugeValue, float64(s.Policy.Policies))
	if k := s.Kubernetes; k != nil {
		up := 0.0
		if k.Connected {
			up = 1
		}
		ch <- prometheus.MustNewConstMetric(m.k8sConnected, prometheus.GaugeValue, up)
		ch <- prometheus.MustNewConstMetric(m.k8sUnenforced, prometheus.GaugeValue, float64(len(k.Unenforced)))
	}
	ch <- prometheus.MustNewConstMetric(m.capacity, prometheus.GaugeValue, float64(s.FlowTable.Capacity))
	ch <- prometheus.MustNewConstMetric(m.perPU, prometheus.GaugeValue, float64(s.FlowTable.PerPU))
	ch <- prometheus.MustNewConstMetric(m.ringSize, prometheus.GaugeValue, float64(s.FlowRing.Size))
	ch <- prometheus.MustNewConstMetric(m.ringRecords, prometheus.GaugeValue, float64(s.FlowRing.Records))
	for _, p := range s.PUFlows {
		ch <- prometheus.MustNewConstMetric(m.puFlows, prometheus.GaugeValue, float64(p.Flows), p.ID)
		ch <- prometheus.MustNewConstMetric(m.puRefused, prometheus.CounterValue, float64(p.Refused), p.ID)
	}
}

// MetricsHandler serves c's metrics in the Prometheus text format, with the
// Go runtime's and the process's own.
func MetricsHandler(c StatsSource) http.Handler {
	reg := prometheus.NewRegistry()
	reg.MustRegister(newMetricsCollector(c), prometheus.NewGoCollector(), prometheus.NewProcessCollector(prometheus.ProcessCollectorOpts{}))
	return promhttp.HandlerFor(reg, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError})
}
