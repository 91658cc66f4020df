package node

import (
	"net/http"
	"strings"
	"sync/atomic"
)

// Readiness: the control socket answers from the start of Daemon.Start,
// /healthz at once (the process is alive), /readyz with 503 and the phase
// until the daemon enforces (plumbed, the PUs of the previous run
// restored, the policy loaded, its loops running), and every other
// request with 503 until then: nothing reads a half-started daemon.

// ReadySource is a Controller that is not ready at once: NotReady returns ""
// when it is, else what it is doing.
type ReadySource interface {
	NotReady() string
}

// phase is the daemon's readiness ("" when ready).
type phase struct{ v atomic.Pointer[string] }

func (p *phase) set(s string) { p.v.Store(&s) }

func (p *phase) get() string {
	if s := p.v.Load(); s != nil {
		return *s
	}
	return "not started"
}

// Readiness phases.
const (
	phaseStarting  = "starting: plumbing the node (bridge, injection port, steering table, flow log)"
	phaseRestoring = "starting: restoring the PUs of the previous run"
	phaseServing   = "starting: starting the monitors and loops"
	phaseStopping  = "stopping"
)

// NotReady says why the daemon does not enforce yet ("" once it does).
func (d *Daemon) NotReady() string { return d.phase.get() }

// readyGate serves /healthz and /readyz, and answers every other request
// with 503 while c is not ready.
func readyGate(c Controller, next http.Handler) http.Handler {
	rs, _ := c.(ReadySource)
	notReady := func() string {
		if rs == nil {
			return ""
		}
		return rs.NotReady()
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.URL.Path == "/healthz" && (r.Method == http.MethodGet || r.Method == http.MethodHead):
			writeJSON(w, http.StatusOK, map[string]string{"status": "alive"})
		case r.URL.Path == "/readyz" && (r.Method == http.MethodGet || r.Method == http.MethodHead):
			if why := notReady(); why != "" {
				writeJSON(w, http.StatusServiceUnavailable, map[string]string{"error": "not ready: " + why})
				return
			}
			writeJSON(w, http.StatusOK, map[string]string{"status": "ready"})
		default:
			if why := notReady(); why != "" {
				writeJSON(w, http.StatusServiceUnavailable, map[string]string{"error": "not ready: " + why})
				return
			}
			next.ServeHTTP(w, r)
		}
	})
}

// Ready asks the daemon whether it enforces: nil when it does, else an
// error saying why not (its phase, or that it does not answer).
func (c *Client) Ready() error {
	var out map[string]string
	return c.do("GET", "/readyz", nil, &out)
}

// Healthy asks the daemon whether it is alive.
func (c *Client) Healthy() error {
	var out map[string]string
	return c.do("GET", "/healthz", nil, &out)
}

// IsNotReady reports whether err is the daemon's "not ready" answer (as
// opposed to no daemon at all).
func IsNotReady(err error) bool { return err != nil && strings.Contains(err.Error(), "not ready: ") }
