package node

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/netip"
	"time"
)

// FlowSource is what GET /v1/flows and the web page read: the daemon's
// ring of recent flow records.
type FlowSource interface {
	// FlowsSince appends the kept records after seq (names and verdict
	// filled in) to dst, and returns a channel closed when more arrive.
	FlowsSince(seq uint64, dst []Flow) ([]Flow, <-chan struct{})
}

// FlowsSince implements FlowSource.
func (d *Daemon) FlowsSince(seq uint64, dst []Flow) ([]Flow, <-chan struct{}) {
	n := len(dst)
	dst, ch := d.ring.since(seq, dst)
	if len(dst) == n {
		return dst, ch
	}
	names := map[string]string{}
	byAddr := map[netip.Addr]string{}
	d.pus.each(func(p *livePU) {
		names[p.info.ID] = p.info.Name
		for _, a := range p.info.IPs {
			byAddr[a] = p.info.Name
		}
	})
	for i := n; i < len(dst); i++ {
		annotate(&dst[i], names, byAddr)
	}
	return dst, ch
}

// annotate fills a flow's names and verdict.
func annotate(f *Flow, names map[string]string, byAddr map[netip.Addr]string) {
	f.LocalName = names[f.Local.ID]
	f.RemoteName = byAddr[f.Remote.IP.Unmap()]
	f.Verdict = verdictOf(&f.Record)
}

// registerFlows adds GET /v1/flows when the controller keeps flows: the
// matching records as JSON lines, oldest first; with follow=true the
// answer stays open and new records stream as they come.
func registerFlows(mux *http.ServeMux, c Controller) {
	fs, ok := c.(FlowSource)
	if !ok {
		return
	}
	mux.HandleFunc("GET /v1/flows", func(w http.ResponseWriter, r *http.Request) {
		q, err := ParseFlowQuery(r.URL.Query(), time.Now())
		if err != nil {
			writeErr(w, fmt.Errorf("%w: %v", ErrInvalid, err))
			return
		}
		serveFlows(w, r, fs, q)
	})
	// The web page (web.go), read-only, under /ui/.
	if ws, ok := c.(WebSource); ok {
		mux.Handle("/ui/", http.StripPrefix("/ui", WebHandler(ws)))
		mux.Handle("GET /ui", http.RedirectHandler("/ui/", http.StatusMovedPermanently))
	}
}

func serveFlows(w http.ResponseWriter, r *http.Request, fs FlowSource, q *FlowQuery) {
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.WriteHeader(http.StatusOK)
	enc := json.NewEncoder(w)
	flusher, _ := w.(http.Flusher)
	var buf []Flow
	seq := q.After
	first := true
	for {
		var changed <-chan struct{}
		buf, changed = fs.FlowsSince(seq, buf[:0])
		matched := buf[:0]
		for i := range buf {
			seq = buf[i].Seq
			if q.Match(&buf[i]) {
				matched = append(matched, buf[i])
			}
		}
		if first && q.Last > 0 && len(matched) > q.Last {
			matched = matched[len(matched)-q.Last:]
		}
		// The kernel's counts of the open flows (one dump of each PU's
		// set): for the answer to the query, not for each record followed.
		if kc, ok := fs.(kernelCounter); ok && first {
			kc.addKernelCounts(matched)
		}
		first = false
		for i := range matched {
			if enc.Encode(&matched[i]) != nil {
				return
			}
		}
		if flusher != nil {
			flusher.Flush()
		}
		if !q.Follow {
			return
		}
		select {
		case <-changed:
		case <-r.Context().Done():
			return
		}
	}
}
