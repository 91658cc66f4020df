package node

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"time"
)

// PUInfo describes a processing unit the daemon enforces.
type PUInfo struct {
	ID      string            `json:"id"`
	Name    string            `json:"name"`
	Kind    string            `json:"kind"` // netns, docker, process
	NetNS   string            `json:"netns,omitempty"`
	PID     int               `json:"pid,omitempty"`
	IPs     []netip.Addr      `json:"ips"`
	Tags    map[string]string `json:"tags"`
	Veth    string            `json:"veth,omitempty"`
	Bridge  string            `json:"bridge,omitempty"`
	State   PUState           `json:"state"`
	Created time.Time         `json:"created"`
	// MAC and Addrs are who the PU is on its link: the only Ethernet
	// source and the only IP sources (with their on-link prefix,
	// link-local included) its frames may carry (anti-spoofing).
	MAC   string         `json:"mac,omitempty"`
	Addrs []netip.Prefix `json:"addrs,omitempty"`
	// Drops counts the PU's own frames the kernel dropped, by reason
	// (spoofed-source, rogue-router, pu-packet-budget), since it was attached.
	Drops map[string]uint64 `json:"drops,omitempty"`
}

// AttachRequest asks the daemon to police a network namespace.
type AttachRequest struct {
	// NetNS is a name under /run/netns or a path (/proc/PID/ns/net).
	NetNS  string            `json:"netns"`
	Name   string            `json:"name,omitempty"`
	Labels map[string]string `json:"labels"`
	// Tags are identity tags set by an orchestrator integration (e.g. a
	// pod's @sys:namespace, @sys:name and @ns:<label>): reserved ('@')
	// keys are allowed, user keys too, and they win over the labels and
	// the tags the monitor sets. Only a trusted caller can set them: the
	// control socket is root-only. Labels still cannot carry '@' keys.
	Tags map[string]string `json:"tags,omitempty"`
}

// CreateRequest asks the daemon to create a new PU namespace on the node
// bridge (used by `trireme run`).
type CreateRequest struct {
	Name   string            `json:"name"`
	Labels map[string]string `json:"labels"`
}

// Stats is the daemon's view of itself for `trireme stats`.
type Stats struct {
	Node     string            `json:"node"`
	Started  time.Time         `json:"started"`
	PUs      int               `json:"pus"`
	Flows    int               `json:"flows"`
	Counters map[string]uint64 `json:"counters"`
	Drops    map[string]uint64 `json:"drops"`
	Policy   PolicyStatus      `json:"policy"`
	Excluded []netip.Prefix    `json:"excluded"`
	// FlowTable is the flow table's size and fill; PUFlows each PU's use
	// of it, most flows first.
	FlowTable FlowTableStats `json:"flowTable"`
	PUFlows   []PUFlowStats  `json:"puFlows,omitempty"`
	// FlowRing is the ring of recent flow records (flowring.go).
	FlowRing FlowRingStats `json:"flowRing"`
	// Kubernetes is the Kubernetes source's state (nil when it is off).
	Kubernetes *KubernetesStatus `json:"kubernetes,omitempty"`
}

// FlowTableStats is the flow table's size and fill.
type FlowTableStats struct {
	// Capacity is the most flows the node tracks; PerPU the most one PU
	// may hold (its share); Flows how many it tracks now.
	Capacity int `json:"capacity"`
	PerPU    int `json:"perPU"`
	Flows    int `json:"flows"`
	// Evictions counts flows removed early to make room (denied, closed
	// or half-open ones, never established ones).
	Evictions uint64 `json:"evictions"`
}

// PUFlowStats is one PU's use of the flow table.
type PUFlowStats struct {
	ID   string `json:"id"`
	Name string `json:"name"`
	// Flows is how many flows the PU holds (at most the table's PerPU).
	Flows int `json:"flows"`
	// Refused counts the PU's new flows refused for lack of room: its
	// share full of established flows (flow-quota), or the table
	// (table-full).
	Refused uint64 `json:"refused"`
	// OverBudget counts the PU's packets the kernel dropped over its
	// packet budget (puPacketBudget) before they reached the daemon.
	OverBudget uint64 `json:"overBudget"`
}

// PolicyStatus tells which policy is in force and whether the last reload
// failed.
type PolicyStatus struct {
	File      string    `json:"file"`
	LoadedAt  time.Time `json:"loadedAt"`
	Policies  int       `json:"policies"`
	LastError string    `json:"lastError,omitempty"`
	ErrorAt   time.Time `json:"errorAt,omitzero"`
}

// Controller is what the daemon exposes through the control API
// (controller.go).
type Controller interface {
	StatsSource
	AttachPU(AttachRequest) (PUInfo, error)
	CreatePU(CreateRequest) (PUInfo, error)
	DetachPU(id string) error
	AddExcluded(netip.Prefix) error
	RemoveExcluded(netip.Prefix) error
}

// StatsSource is the read-only part of a Controller: what `trireme stats`,
// `trireme pu list` and the metrics read.
type StatsSource interface {
	ListPUs() []PUInfo
	Stats() Stats
}

// ErrNotFound is returned by a Controller for an unknown PU; the API maps it
// to 404.
var ErrNotFound = errors.New("not found")

// ErrInvalid wraps request problems; the API maps it to 400.
var ErrInvalid = errors.New("invalid request")

const maxBody = 1 << 20

// Handler serves the control API for c.
func Handler(c Controller) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/pus", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, c.ListPUs())
	})
	mux.HandleFunc("POST /v1/pus", func(w http.ResponseWriter, r *http.Request) {
		var req AttachRequest
		if !readJSON(w, r, &req) {
			return
		}
		if req.NetNS == "" {
			writeErr(w, fmt.Errorf("%w: netns is required", ErrInvalid))
			return
		}
		pu, err := c.AttachPU(req)
		if err != nil {
			writeErr(w, err)
			return
		}
		writeJSON(w, http.StatusCreated, pu)
	})
	mux.HandleFunc("POST /v1/pus/create", func(w http.ResponseWriter, r *http.Request) {
		var req CreateRequest
		if !readJSON(w, r, &req) {
			return
		}
		pu, err := c.CreatePU(req)
		if err != nil {
			writeErr(w, err)
			return
		}
		writeJSON(w, http.StatusCreated, pu)
	})
	mux.HandleFunc("DELETE /v1/pus/{id}", func(w http.ResponseWriter, r *http.Request) {
		if err := c.DetachPU(r.PathValue("id")); err != nil {
			writeErr(w, err)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("POST /v1/excluded", func(w http.ResponseWriter, r *http.Request) {
		var req struct {
			Prefix string `json:"prefix"`
		}
		if !readJSON(w, r, &req) {
			return
		}
		p, err := ParsePrefixOrAddr(req.Prefix)
		if err != nil {
			writeErr(w, fmt.Errorf("%w: %v", ErrInvalid, err))
			return
		}
		if err := c.AddExcluded(p); err != nil {
			writeErr(w, err)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("DELETE /v1/excluded/{prefix...}", func(w http.ResponseWriter, r *http.Request) {
		p, err := ParsePrefixOrAddr(r.PathValue("prefix"))
		if err != nil {
			writeErr(w, fmt.Errorf("%w: %v", ErrInvalid, err))
			return
		}
		if err := c.RemoveExcluded(p); err != nil {
			writeErr(w, err)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("GET /v1/stats", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, c.Stats())
	})
	mux.Handle("GET /metrics", MetricsHandler(c))
	registerFlows(mux, c)
	return readyGate(c, mux)
}

// ParsePrefixOrAddr accepts "10.0.0.1" (a /32 or /128) or "10.0.0.0/24".
func ParsePrefixOrAddr(s string) (netip.Prefix, error) {
	if a, err := netip.ParseAddr(s); err == nil {
		return netip.PrefixFrom(a, a.BitLen()), nil
	}
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("%q is neither an IP address nor a CIDR prefix", s)
	}
	return p.Masked(), nil
}

func readJSON(w http.ResponseWriter, r *http.Request, v any) bool {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		writeErr(w, fmt.Errorf("%w: body: %v", ErrInvalid, err))
		return false
	}
	if dec.More() {
		writeErr(w, fmt.Errorf("%w: body: trailing data after the JSON object", ErrInvalid))
		return false
	}
	return true
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

func writeErr(w http.ResponseWriter, err error) {
	code := http.StatusInternalServerError
	switch {
	case errors.Is(err, ErrNotFound):
		code = http.StatusNotFound
	case errors.Is(err, ErrInvalid):
		code = http.StatusBadRequest
	case errors.Is(err, ErrConflict):
		code = http.StatusConflict
	}
	writeJSON(w, code, map[string]string{"error": err.Error()})
}

// Server is a running control API.
type Server struct {
	srv *http.Server
	l   net.Listener
}

// Close stops serving and removes the socket.
func (s *Server) Close() error {
	err := s.l.Close()
	s.srv.Close()
	return err
}

// Serve listens on the unix socket at path (mode 0600, parent 0700; a stale
// socket from a crashed run is replaced) and serves the API until Close.
func Serve(path string, c Controller) (*Server, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, err
	}
	if err := removeStaleSocket(path); err != nil {
		return nil, err
	}
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, err
	}
	if err := os.Chmod(path, 0o600); err != nil {
		l.Close()
		return nil, err
	}
	srv := &http.Server{Handler: Handler(c), ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(l)
	return &Server{srv: srv, l: l}, nil
}

// removeStaleSocket removes a socket nobody answers on; a live one means
// another daemon runs, which is an error.
func removeStaleSocket(path string) error {
	st, err := os.Lstat(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if st.Mode()&os.ModeSocket == 0 {
		return fmt.Errorf("%s exists and is not a socket", path)
	}
	if conn, err := net.DialTimeout("unix", path, time.Second); err == nil {
		conn.Close()
		return fmt.Errorf("%s: another daemon is listening", path)
	}
	return os.Remove(path)
}
