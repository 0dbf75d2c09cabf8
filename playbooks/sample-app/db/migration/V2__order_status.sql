-- sample-app 2.0.0: orders get a status
ALTER TABLE orders ADD COLUMN status TEXT NOT NULL DEFAULT 'new';
UPDATE orders SET status = 'served' WHERE item = 'espresso';
