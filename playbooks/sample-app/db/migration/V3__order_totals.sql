-- sample-app 3.0.0 (the broken release): a migration that works, in a release that does not
CREATE TABLE order_totals (order_id BIGINT PRIMARY KEY REFERENCES orders (id), cents INT NOT NULL);
INSERT INTO order_totals SELECT id, 250 FROM orders;
UPDATE orders SET status = 'billed' WHERE status = 'new';
