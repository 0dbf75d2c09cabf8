-- sample-app 1.0.0: its orders
CREATE TABLE orders (
    id BIGSERIAL PRIMARY KEY,
    item TEXT NOT NULL,
    placed_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
INSERT INTO orders (item) VALUES ('espresso'), ('croissant');
