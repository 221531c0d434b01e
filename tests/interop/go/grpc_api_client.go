// A grpc-go client of rtserver's GRPC server API, driven by the Python test
// (tests/interop/test_go_grpc.py).
//
// No generated stubs: calls go through conn.Invoke with a codec that passes message
// bytes through, so the Python side builds requests and reads answers with rtserver's
// own stubs. One JSON object per line on stdin, calls run concurrently on one
// connection:
//
//	{"id": 1, "method": "Publish", "request": "<hex>", "metadata": {"authorization": "apikey k"},
//	 "timeout_ms": 5000, "gzip": false}
//
// (timeout_ms: the call's deadline, none if 0; gzip: compress the request with gzip)
//
// and one line per answer on stdout, in the order they finish:
//
//	{"id": 1, "response": "<hex>"}  or  {"id": 1, "code": 16, "message": "unauthenticated"}
//
// The program exits when stdin ends and every call has answered.
package main

import (
	"bufio"
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/encoding/gzip"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

const service = "/centrifugal.centrifugo.api.CentrifugoApi/"

// rawCodec passes message bytes through (requests are built, answers read, in Python).
type rawCodec struct{}

func (rawCodec) Marshal(v interface{}) ([]byte, error) {
	b, ok := v.(*[]byte)
	if !ok {
		return nil, fmt.Errorf("rawCodec: cannot marshal %T", v)
	}
	return *b, nil
}

func (rawCodec) Unmarshal(data []byte, v interface{}) error {
	b, ok := v.(*[]byte)
	if !ok {
		return fmt.Errorf("rawCodec: cannot unmarshal into %T", v)
	}
	*b = append([]byte(nil), data...)
	return nil
}

func (rawCodec) Name() string { return "proto" }

type call struct {
	ID        int               `json:"id"`
	Method    string            `json:"method"`
	Request   string            `json:"request"`
	Metadata  map[string]string `json:"metadata"`
	TimeoutMS float64           `json:"timeout_ms"`
	Gzip      bool              `json:"gzip"`
}

type answer struct {
	ID       int     `json:"id"`
	Response *string `json:"response,omitempty"`
	Code     *int    `json:"code,omitempty"`
	Message  string  `json:"message,omitempty"`
}

func run(conn *grpc.ClientConn, c call) answer {
	in, err := hex.DecodeString(c.Request)
	if err != nil {
		code := -1
		return answer{ID: c.ID, Code: &code, Message: "bad hex: " + err.Error()}
	}
	ctx := metadata.NewOutgoingContext(context.Background(), metadata.New(c.Metadata))
	if c.TimeoutMS > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, time.Duration(c.TimeoutMS*float64(time.Millisecond)))
		defer cancel()
	}
	opts := []grpc.CallOption{grpc.ForceCodec(rawCodec{})}
	if c.Gzip {
		opts = append(opts, grpc.UseCompressor(gzip.Name))
	}
	var out []byte
	if err := conn.Invoke(ctx, service+c.Method, &in, &out, opts...); err != nil {
		st := status.Convert(err)
		code := int(st.Code())
		return answer{ID: c.ID, Code: &code, Message: st.Message()}
	}
	response := hex.EncodeToString(out)
	return answer{ID: c.ID, Response: &response}
}

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: grpc_api_client HOST:PORT")
		os.Exit(2)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	conn, err := grpc.DialContext(ctx, os.Args[1], grpc.WithInsecure(), grpc.WithBlock(),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(16<<20)))
	cancel()
	if err != nil {
		fmt.Fprintln(os.Stderr, "dial:", err)
		os.Exit(1)
	}
	defer conn.Close()

	var mu sync.Mutex
	out := json.NewEncoder(os.Stdout)
	var wg sync.WaitGroup
	scanner := bufio.NewScanner(os.Stdin)
	scanner.Buffer(make([]byte, 1<<20), 64<<20)
	for scanner.Scan() {
		var c call
		if err := json.Unmarshal(scanner.Bytes(), &c); err != nil {
			fmt.Fprintln(os.Stderr, "bad input line:", err)
			os.Exit(2)
		}
		wg.Add(1)
		go func(c call) {
			defer wg.Done()
			a := run(conn, c)
			mu.Lock()
			defer mu.Unlock()
			if err := out.Encode(a); err != nil {
				fmt.Fprintln(os.Stderr, "write:", err)
				os.Exit(1)
			}
		}(c)
	}
	if err := scanner.Err(); err != nil {
		fmt.Fprintln(os.Stderr, "read:", err)
		os.Exit(2)
	}
	wg.Wait()
}
