package node

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"time"
)

// Client talks to a daemon's control API over its unix socket.
type Client struct {
	socket string
	hc     *http.Client
}

// NewClient returns a client for the daemon listening on socket.
func NewClient(socket string) *Client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		},
	}
	return &Client{socket: socket, hc: &http.Client{Transport: tr, Timeout: 30 * time.Second}}
}

// APIError is an error the daemon answered with.
type APIError struct {
	Status  int
	Message string
}

func (e *APIError) Error() string { return e.Message }

func (c *Client) do(method, path string, body, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, "http://trireme"+path, rd)
	if err != nil {
		return err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return fmt.Errorf("daemon at %s: %w", c.socket, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 300 {
		var e struct {
			Error string `json:"error"`
		}
		_ = json.NewDecoder(io.LimitReader(resp.Body, maxBody)).Decode(&e)
		if e.Error == "" {
			e.Error = resp.Status
		}
		return &APIError{Status: resp.StatusCode, Message: e.Error}
	}
	if out != nil {
		return json.NewDecoder(resp.Body).Decode(out)
	}
	return nil
}

// ListPUs returns the PUs the daemon enforces.
func (c *Client) ListPUs() ([]PUInfo, error) {
	var pus []PUInfo
	return pus, c.do("GET", "/v1/pus", nil, &pus)
}

// AttachPU polices an existing network namespace.
func (c *Client) AttachPU(req AttachRequest) (PUInfo, error) {
	var pu PUInfo
	return pu, c.do("POST", "/v1/pus", req, &pu)
}

// CreatePU creates a new PU namespace on the node bridge.
func (c *Client) CreatePU(req CreateRequest) (PUInfo, error) {
	var pu PUInfo
	return pu, c.do("POST", "/v1/pus/create", req, &pu)
}

// DetachPU stops policing a PU (and removes a namespace trireme created).
func (c *Client) DetachPU(id string) error {
	return c.do("DELETE", "/v1/pus/"+url.PathEscape(id), nil, nil)
}

// AddExcluded adds an excluded network at runtime.
func (c *Client) AddExcluded(p netip.Prefix) error {
	return c.do("POST", "/v1/excluded", map[string]string{"prefix": p.String()}, nil)
}

// RemoveExcluded removes an excluded network added at runtime.
func (c *Client) RemoveExcluded(p netip.Prefix) error {
	return c.do("DELETE", "/v1/excluded/"+p.String(), nil, nil)
}

// Stats returns the daemon's counters and policy status.
func (c *Client) Stats() (Stats, error) {
	var s Stats
	return s, c.do("GET", "/v1/stats", nil, &s)
}

// Metrics returns the daemon's Prometheus metrics (text format).
func (c *Client) Metrics() (string, error) {
	resp, err := c.hc.Get("http://trireme/metrics")
	if err != nil {
		return "", fmt.Errorf("daemon at %s: %w", c.socket, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", &APIError{Status: resp.StatusCode, Message: resp.Status}
	}
	return string(b), nil
}
