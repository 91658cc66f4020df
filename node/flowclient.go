package node

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
)

// Flows asks the daemon for the flows q selects and calls fn for each, in
// order, until the answer ends (or, with q.Follow, until ctx is done or fn
// returns an error).
func (c *Client) Flows(ctx context.Context, q *FlowQuery, fn func(*Flow) error) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://trireme/v1/flows?"+q.Encode().Encode(), nil)
	if err != nil {
		return err
	}
	// No overall timeout: a follow lasts until ctx ends.
	hc := &http.Client{Transport: c.hc.Transport}
	resp, err := hc.Do(req)
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
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), maxBody)
	for sc.Scan() {
		var f Flow
		if err := json.Unmarshal(sc.Bytes(), &f); err != nil {
			return fmt.Errorf("daemon at %s: a flow record: %w", c.socket, err)
		}
		if err := fn(&f); err != nil {
			return err
		}
	}
	if err := sc.Err(); err != nil && ctx.Err() == nil {
		return err
	}
	return nil
}
