package node

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"path"
	"slices"
	"strings"
	"time"

	"github.com/trireme-go/trireme/identity"
	"github.com/trireme-go/trireme/node/webui"
	"github.com/trireme-go/trireme/policy"
)

// The web page: a live service map of the node's flows (docs/observability.md).
// It is read-only: GET requests only, answered from the ring, the PU list
// and the policy in force. It is served on the control socket under /ui/,
// and, when the config asks, on a TCP address that wants a token.

// WebSource is what the page reads.
type WebSource interface {
	StatsSource
	FlowSource
	// EffectivePolicy is the policy that applies to the PU with this ID.
	EffectivePolicy(id string) (PUPolicyView, error)
}

// PUPolicyView is a PU's effective policy as the page shows it: the
// policies whose selector picks the PU, their rules in order.
type PUPolicyView struct {
	PU       string       `json:"pu"`
	Tags     []string     `json:"tags"`
	Policies []PolicyView `json:"policies"`
}

// PolicyView is one policy and its rules, as text.
type PolicyView struct {
	Name     string     `json:"name"`
	Selector string     `json:"selector"`
	Ingress  []RuleView `json:"ingress"`
	Egress   []RuleView `json:"egress"`
}

// RuleView is one rule.
type RuleView struct {
	Index   int      `json:"index"`
	Name    string   `json:"name,omitempty"`
	Action  string   `json:"action"`
	Peers   []string `json:"peers"` // empty: every peer
	Ports   []string `json:"ports"` // empty: every port
	Observe string   `json:"observe,omitempty"`
}

// EffectivePolicy implements WebSource.
func (d *Daemon) EffectivePolicy(id string) (PUPolicyView, error) {
	p, ok := d.pus.get(id)
	if !ok {
		return PUPolicyView{}, fmt.Errorf("%w: PU %q", ErrNotFound, id)
	}
	tags := identity.NewTags(p.info.Tags)
	eng := d.res.Current()
	return policyView(p.info.ID, tags, eng.Set(), eng.ForPU(tags).Policies()), nil
}

func policyView(id string, tags identity.Tags, set *policy.Set, names []string) PUPolicyView {
	v := PUPolicyView{PU: id, Tags: tags.Strings(), Policies: []PolicyView{}}
	rules := func(rs []policy.Rule) []RuleView {
		out := []RuleView{}
		for _, r := range rs {
			rv := RuleView{Index: r.Index, Name: r.Name, Action: r.Action.String(), Peers: []string{}, Ports: []string{}}
			for _, p := range r.Peers {
				switch {
				case p.Selector != nil:
					rv.Peers = append(rv.Peers, "selector "+p.Selector.Text)
				default:
					s := "cidr " + p.CIDR.String()
					for _, e := range p.Except {
						s += " except " + e.String()
					}
					rv.Peers = append(rv.Peers, s)
				}
			}
			for _, pr := range r.Ports {
				rv.Ports = append(rv.Ports, pr.String())
			}
			if r.Observe != policy.Enforce {
				rv.Observe = r.Observe.String()
			}
			out = append(out, rv)
		}
		return out
	}
	for _, pol := range set.Policies {
		if !slices.Contains(names, pol.Name) {
			continue
		}
		sel := ""
		if pol.Selector != nil {
			sel = pol.Selector.Text
		}
		v.Policies = append(v.Policies, PolicyView{Name: pol.Name, Selector: sel, Ingress: rules(pol.Ingress), Egress: rules(pol.Egress)})
	}
	return v
}

// maxWebWindow bounds the map's window.
const maxWebWindow = 24 * time.Hour

// maxWebFlows bounds the flows one answer of the page's flow list holds.
const maxWebFlows = 200

// WebHandler serves the page and its read-only API for src. Paths are
// relative to where it is mounted (http.StripPrefix).
func WebHandler(src WebSource) http.Handler {
	mux := http.NewServeMux()
	assets, err := fs.Sub(webui.Assets, "assets")
	if err != nil {
		panic(err) // the embedded tree is part of the binary
	}
	mux.Handle("GET /", http.FileServerFS(assets))
	mux.HandleFunc("GET /api/map", func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		if err := onlyParams(q, "window", "group"); err != nil {
			writeErr(w, err)
			return
		}
		window, err := webWindow(q.Get("window"))
		if err != nil {
			writeErr(w, err)
			return
		}
		group := q.Get("group")
		if len(group) > 253 {
			writeErr(w, fmt.Errorf("%w: group: a tag key of at most 253 bytes", ErrInvalid))
			return
		}
		flows, _ := src.FlowsSince(0, nil)
		now := time.Now()
		m := buildServiceMap(flows, src.ListPUs(), group, now.Add(-window))
		m.Generated, m.Window = now.UTC(), window.String()
		writeJSON(w, http.StatusOK, m)
	})
	mux.HandleFunc("GET /api/flows", func(w http.ResponseWriter, r *http.Request) {
		// The flows of a map node or edge (node=ID, a map node's or
		// edge's ID), newest first.
		q := r.URL.Query()
		if err := onlyParams(q, "node", "window"); err != nil {
			writeErr(w, err)
			return
		}
		window, err := webWindow(q.Get("window"))
		if err != nil {
			writeErr(w, err)
			return
		}
		id := q.Get("node")
		if id == "" || len(id) > 512 {
			writeErr(w, fmt.Errorf("%w: node: a map node's or edge's ID", ErrInvalid))
			return
		}
		flows, _ := src.FlowsSince(0, nil)
		m := newMapper(src.ListPUs(), "")
		since := time.Now().Add(-window)
		out := []Flow{}
		for i := len(flows) - 1; i >= 0 && len(out) < maxWebFlows; i-- {
			if !flows[i].Time.Before(since) && m.flowTouches(&flows[i], id) {
				out = append(out, flows[i])
			}
		}
		if kc, ok := src.(kernelCounter); ok {
			kc.addKernelCounts(out)
		}
		writeJSON(w, http.StatusOK, out)
	})
	mux.HandleFunc("GET /api/policy", func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		if err := onlyParams(q, "pu"); err != nil {
			writeErr(w, err)
			return
		}
		v, err := src.EffectivePolicy(q.Get("pu"))
		if err != nil {
			writeErr(w, err)
			return
		}
		writeJSON(w, http.StatusOK, v)
	})
	return webHeaders(mux)
}

func onlyParams(q url.Values, known ...string) error {
	for k, vs := range q {
		if !slices.Contains(known, k) {
			return fmt.Errorf("%w: unknown parameter %q", ErrInvalid, k)
		}
		if len(vs) > 1 {
			return fmt.Errorf("%w: %s: give it once", ErrInvalid, k)
		}
	}
	return nil
}

// webWindow reads the map's time window (default 5m).
func webWindow(s string) (time.Duration, error) {
	if s == "" {
		return 5 * time.Minute, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d <= 0 || d > maxWebWindow {
		return 0, fmt.Errorf("%w: window: %q: want a duration up to %v (5m)", ErrInvalid, s, maxWebWindow)
	}
	return d, nil
}

// webCSP lets the page load only its own files and talk only to its own
// API. The one inline style allowed, by its hash, is the stylesheet
// cytoscape.js inserts (the browser test fails when a new version of it
// changes: update the hash then).
const webCSP = "default-src 'none'; script-src 'self'; style-src 'self' 'sha256-pgvDUBa4IjFA2yuSJ2cqcyxmNYJMborsd0ORcRv9vw8='; " +
	"img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"

// webHeaders makes the page read-only (GET and HEAD), keeps it out of
// frames, and lets it load only its own scripts and data.
func webHeaders(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			http.Error(w, "the page is read-only", http.StatusMethodNotAllowed)
			return
		}
		hd := w.Header()
		hd.Set("Content-Security-Policy", webCSP)
		hd.Set("X-Content-Type-Options", "nosniff")
		hd.Set("X-Frame-Options", "DENY")
		hd.Set("Referrer-Policy", "no-referrer")
		hd.Set("Cache-Control", "no-store")
		h.ServeHTTP(w, r)
	})
}

// webTokenCookie carries the token after the first request.
const webTokenCookie = "trireme_web_token"

// requireToken admits requests that carry the token: as a bearer token,
// in the cookie, or once as ?token= (answered with the cookie and a
// redirect to the same page without it, so the token leaves the address
// bar and the history).
func requireToken(token string, h http.Handler) http.Handler {
	ok := func(s string) bool { return subtle.ConstantTimeCompare([]byte(s), []byte(token)) == 1 }
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if t, found := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer "); found && ok(t) {
			h.ServeHTTP(w, r)
			return
		}
		if c, err := r.Cookie(webTokenCookie); err == nil && ok(c.Value) {
			h.ServeHTTP(w, r)
			return
		}
		q := r.URL.Query()
		if t := q.Get("token"); t != "" && ok(t) && (r.Method == http.MethodGet || r.Method == http.MethodHead) {
			http.SetCookie(w, &http.Cookie{Name: webTokenCookie, Value: token, Path: "/", HttpOnly: true, SameSite: http.SameSiteStrictMode})
			q.Del("token")
			u := *r.URL
			u.RawQuery = q.Encode()
			http.Redirect(w, r, u.RequestURI(), http.StatusSeeOther)
			return
		}
		w.Header().Set("WWW-Authenticate", `Bearer realm="trireme"`)
		http.Error(w, "a token is needed (open the address with ?token=...)", http.StatusUnauthorized)
	})
}

// webServer is the page's TCP listener.
type webServer struct {
	srv *http.Server
	l   net.Listener
}

// serveWeb listens on addr and serves the page to requests with the token.
func serveWeb(addr, token string, src WebSource) (*webServer, error) {
	if len(token) < minWebToken {
		return nil, errors.New("web: the token is too short")
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("web: %w", err)
	}
	srv := &http.Server{Handler: requireToken(token, WebHandler(src)), ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout: 10 * time.Second, WriteTimeout: 30 * time.Second, IdleTimeout: time.Minute, MaxHeaderBytes: 16 << 10}
	go srv.Serve(l)
	return &webServer{srv: srv, l: l}, nil
}

// Addr is where the page listens.
func (s *webServer) Addr() string { return s.l.Addr().String() }

func (s *webServer) Close() error { return s.srv.Close() }

// serveWeb starts the page's TCP listener when the config asks for one.
func (d *Daemon) serveWeb() error {
	w := d.cfg.Observe.Web
	if w.Listen == "" {
		return nil
	}
	token, err := readWebToken(w.TokenFile)
	if err != nil {
		return fmt.Errorf("observe.web.tokenFile: %w", err)
	}
	if d.web, err = serveWeb(w.Listen, token, d); err != nil {
		return err
	}
	d.log.Info("web page", "listen", d.web.Addr())
	return nil
}

// WebProxy serves, to requests with the token, the web page of the daemon
// whose control socket is at socket: `trireme ui` runs it on a local TCP
// address for a browser (the page itself is on the socket under /ui/).
// Only the page's paths are forwarded, read-only; never the control API.
func WebProxy(socket, token string) (http.Handler, error) {
	if len(token) < minWebToken {
		return nil, errors.New("web: the token is too short")
	}
	tr := &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", socket)
	}}
	proxy := &httputil.ReverseProxy{
		Rewrite: func(r *httputil.ProxyRequest) {
			r.Out.URL.Scheme, r.Out.URL.Host, r.Out.Host = "http", "trireme", "trireme"
			// Cleaned: "/../v1/pus" stays under /ui/.
			r.Out.URL.Path = "/ui" + path.Clean("/"+r.In.URL.Path)
			r.Out.URL.RawPath = ""
			r.Out.Header.Del("Authorization")
			r.Out.Header.Del("Cookie")
		},
		Transport: tr,
	}
	return requireToken(token, webHeaders(proxy)), nil
}
