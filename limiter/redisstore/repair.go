package redisstore

// What the limiters need to repair a server that lost data: the unbans
// it remembers, and whether it may evict keys.

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"time"
)

// Unbanned returns the remembered unbans of keys (see limiter.UnbanLog),
// in round trips of at most redisLoadBatch keys, each bounded by the
// timeout.
func (r *Store) Unbanned(ctx context.Context, keys []netip.Prefix) (map[netip.Prefix]time.Time, error) {
	out := make(map[netip.Prefix]time.Time)
	for batch := range slices.Chunk(keys, redisLoadBatch) {
		names := make([]string, len(batch))
		for i, k := range batch {
			names[i] = r.prefix + "unban:" + k.String()
		}
		cctx, cancel := context.WithTimeout(ctx, r.timeout)
		vals, err := r.client.MGet(cctx, names...).Result()
		cancel()
		if err != nil {
			return nil, r.failed("read unbans", netip.Prefix{}, err)
		}
		for i, v := range vals {
			if s, ok := v.(string); ok {
				if ms, err := strconv.ParseInt(s, 10, 64); err == nil {
					out[batch[i]] = time.UnixMilli(ms)
				}
			}
		}
	}
	return out, nil
}

// EvictionPolicy returns the server's maxmemory-policy (CONFIG GET). Any
// other than "noeviction" may drop ban records under memory pressure; the
// limiters write back a ban they find missing, but an instance that
// starts meanwhile does not know it. An error: the server would not say
// (CONFIG disabled, as on some managed services).
func (r *Store) EvictionPolicy(ctx context.Context) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()
	m, err := r.client.ConfigGet(ctx, "maxmemory-policy").Result()
	if err != nil {
		return "", fmt.Errorf("redisstore: config get maxmemory-policy: %w", err)
	}
	p, ok := m["maxmemory-policy"]
	if !ok {
		return "", errors.New("redisstore: config get maxmemory-policy: no answer")
	}
	return p, nil
}
